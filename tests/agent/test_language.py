"""The person at the PC reads their own language: prompts, CLI and the phrase's words.

Real parts: a broker on 127.0.0.1 port 0, agents started with ``LANG=fr_BE.UTF-8``
(or Dutch, or a language we do not speak) whose terminal prompt runs in a real
pty, ``allowhelp-agent pending`` as a subprocess in the same locale, and the
technician's API for the phrase the console shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.consent import Pending
from allowhelp.agent.i18n import translations, user_language
from allowhelp.agent.machine import HelperHub
from allowhelp.agent.service import AgentService
from allowhelp.broker.model.phrase import WORD_LISTS
from allowhelp.protocol import helper as hp
from allowhelp.protocol.control import ConsentDecision, ConsentRequest, Hello, Message, decode
from harness import (
    PY,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    broker_cli,
    online,
    wait_for,
)
from xdesk import Xvfb, cmdline, missing_tools

ORG = "Ville de Namur - Service informatique"
REASON = "L'imprimante du 2e étage n'imprime plus <b>rien</b>"
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
CONFIG = AgentConfig("https://b", "pem", "fp", "127.0.0.1", 2222, "key", "a-1", ORG)

# What the consent prompt must say in each language: who asks, for what, why,
# the phrase, and that only a call with the help desk justifies a yes.
PROMPTS = {
    "fr": (
        "demande à ouvrir un terminal de commandes sur ce PC.",
        "Motif : ",
        "Mots de vérification : ",
        "N'autorisez ceci que si vous êtes au téléphone avec le service d'assistance.",
        "Tapez a puis Entrée pour autoriser l'aide, d pour refuser.",
    ),
    "nl": (
        "vraagt om een opdrachtvenster (terminal) op deze pc te openen.",
        "Reden: ",
        "Controlewoorden: ",
        "Sta dit alleen toe als u met de helpdesk aan de telefoon bent.",
        "Typ a en Enter om hulp toe te staan, d om te weigeren.",
    ),
    "en": (
        "asks to open a command shell (terminal) on this PC.",
        "Reason: ",
        "Verification phrase: ",
        "Only allow this if you are on the phone with the help desk.",
        "Type a and Enter to allow help, d to deny.",
    ),
}
LOCALES = {"fr": "fr_BE.UTF-8", "nl": "nl_BE.UTF-8", "en": "es_ES.UTF-8"}  # es: not spoken
PENDING_WORDS = {"fr": " demande un terminal de commandes : ", "nl": " vraagt een opdrachtvenster"}
PENDING_WORDS["en"] = " asks for a command shell: "


def env_with(locale: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return {**env, "LANG": locale, **more}


# the language from the environment, as gettext reads it


@pytest.mark.parametrize(
    ("env", "language"),
    [
        ({"LANG": "fr_BE.UTF-8"}, "fr"),
        ({"LANG": "nl_BE.UTF-8"}, "nl"),
        ({"LANG": "de_BE.UTF-8"}, "de"),
        ({"LANG": "fr_BE.UTF-8", "LC_MESSAGES": "nl_BE.UTF-8"}, "nl"),
        ({"LANG": "nl_BE.UTF-8", "LC_ALL": "fr_FR.UTF-8"}, "fr"),
        ({"LANG": "en_GB.UTF-8", "LANGUAGE": "es:fr:nl"}, "fr"),  # the first one we speak
        ({"LANG": "es_ES.UTF-8"}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "POSIX"}, "en"),
        ({}, "en"),
    ],
)
def test_the_language_comes_from_the_session_locale(env: dict[str, str], language: str) -> None:
    assert user_language(env) == language


def _pending(language: str, kind: str = "shell", help_code: str = "") -> Pending:
    request = ConsentRequest(
        session_id="abcdefgh1234",
        organisation=ORG,
        technician="Émilie Dupont",
        kind=kind,  # type: ignore[arg-type]
        reason=REASON,
        phrase="castor prune volcan",
        timeout=60.0,
        help_code=help_code,
    )
    return Pending(request, 0.0, 60.0, language=language)


@pytest.mark.parametrize("language", ["fr", "nl", "de"])
def test_every_prompt_names_who_what_why_the_phrase_and_the_phone(language: str) -> None:
    english = {kind: _pending("en", kind).prompt_text() for kind in ("shell", "screen")}
    for kind in ("shell", "screen", "admin-shell"):
        text = _pending(language, kind, help_code="K7-Q2").prompt_text()
        lines = text.split("\n")
        # what the organisation wrote and what the technician typed: as typed
        assert ORG in lines[0] and "Émilie Dupont" in lines[0]
        assert lines[1].endswith(REASON)
        assert lines[2].endswith("castor prune volcan")
        assert "K7-Q2" in lines[3]
        assert len(lines) == 5 and text not in english.values()
    # the closing sentence is the help desk warning, in that language
    warning = translations(language).gettext(
        "Only allow this if you are on the phone with the help desk."
    )
    assert warning != "Only allow this if you are on the phone with the help desk."
    assert _pending(language).prompt_text().endswith(warning)


def test_an_unknown_language_gets_the_english_prompt() -> None:
    assert _pending("es").prompt_text() == _pending("en").prompt_text()
    assert "Only allow this if you are on the phone with the help desk." in (
        _pending("en").prompt_text()
    )


def test_hello_and_helper_hello_carry_the_language_and_stay_compatible() -> None:
    hello = Hello(hostname="pc", os="Linux", user="ana", version="1", language="fr")
    assert decode(hello.encode()) == hello
    old = b'{"type": "hello", "hostname": "pc", "os": "Linux", "user": "ana", "version": "1"}'
    assert decode(old).language == ""  # type: ignore[attr-defined]
    assert hp.decode(hp.HelperHello(language="nl").encode()) == hp.HelperHello("nl")
    assert hp.decode(b'{"type": "helper"}') == hp.HelperHello()


# a real agent in a real pty, in the user's locale


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Broker]]:
    fleet = Fleet(tmp_path_factory.mktemp("language"))
    try:
        broker = fleet.broker(extra=["--consent-timeout", "30", "--organisation", ORG]).start()
        broker.add_user("root-admin", "admin password 123", role="admin")
        broker.add_user(TECH, TECH_PW)
        yield fleet, broker
    finally:
        fleet.close()


def read_until(fd: int, marker: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; saw {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 4096)
    return seen


def agent_in_pty(fleet: tuple[Fleet, Broker], name: str, env: dict[str, str]) -> tuple[Agent, int]:
    group, broker = fleet
    agent = group.agent(name)
    enrolled = subprocess.run(
        [PY, "-m", "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    master, slave = os.openpty()
    with agent.log.open("ab") as log:
        agent.proc = subprocess.Popen(
            [PY, "-m", "allowhelp.agent.cli", "run", "--config", str(agent.config),
             "--reconnect-cap", "2", "--prompt", "terminal"],
            stdin=slave, stdout=slave, stderr=log, env=env,
        )  # fmt: skip
    os.close(slave)
    wait_for(lambda: online(broker, agent.agent_id), 20, "agent online")
    return agent, master


def pending_text(agent: Agent, env: dict[str, str]) -> str:
    done = subprocess.run(
        [PY, "-m", "allowhelp.agent.cli", "pending", "--config", str(agent.config)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("language", ["fr", "nl", "en"])
def test_the_agent_speaks_the_users_language_and_draws_their_words(
    fleet: tuple[Fleet, Broker], language: str
) -> None:
    env = env_with(LOCALES[language])
    agent, master = agent_in_pty(fleet, f"agent-{language}", env)
    desk = Desk.login(fleet[1], TECH, TECH_PW)
    try:
        session = desk.request(agent.agent_id, reason=REASON).json()
        shown = read_until(master, PROMPTS[language][-1].encode()).decode()
        for sentence in PROMPTS[language]:
            assert sentence in shown, (sentence, shown)
        assert ORG in shown and REASON in shown  # as typed, never translated
        # the words come from the user's list, and the console shows the same ones
        words = session["phrase"].split()
        assert len(words) == 3 and all(w in WORD_LISTS[language] for w in words), words
        assert desk.session(session["id"])["phrase"] == session["phrase"]
        assert session["phrase"] in shown
        listed = pending_text(agent, env)
        assert PENDING_WORDS[language] in listed and session["phrase"] in listed, listed
        # an answer on the terminal, said back in the same language
        os.write(master, b"d\n")
        assert desk.wait_state(session["id"], "denied")["state"] == "denied"
        said = translations(language).gettext("Denied.")
        read_until(master, said.encode())
        refused = subprocess.run(
            [PY, "-m", "allowhelp.agent.cli", "allow", session["id"],
             "--config", str(agent.config)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert refused.returncode == 2
        expected = translations(language).gettext(
            "no request %(session)s is waiting (answered or expired)"
        ) % {"session": session["id"]}
        assert expected in refused.stderr, refused.stderr
    finally:
        desk.close()
        os.close(master)
        agent.stop()


def test_the_cli_without_an_agent_says_so_in_the_users_language(tmp_path: Path) -> None:
    for locale, words in (("fr_BE.UTF-8", "l'agent ne tourne pas"), ("nl_BE.UTF-8", "draait niet")):
        done = subprocess.run(
            [PY, "-m", "allowhelp.agent.cli", "pending", "--config", str(tmp_path / "none")],
            capture_output=True, text=True, timeout=60, env=env_with(locale), check=False,
        )  # fmt: skip
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


# the desktop dialog and the session window, under Xvfb


@pytest.fixture(scope="module")
def xvfb() -> Iterator[Xvfb]:
    if missing := missing_tools():
        pytest.fail(f"{', '.join(missing)} needed: run scripts/install test")
    screen = Xvfb.start()
    yield screen
    screen.stop()


def audited_prompt(broker: Broker, kind: str, session_id: str) -> str:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    record = next(r for r in records if r["type"] == kind and r["target"] == session_id)
    return str(record["details"]["prompt"])


# What the dialog and the session window say, word for word, per language.
DIALOGS = {
    "fr": {
        "locale": "fr_BE.UTF-8",
        "title": f"^Demande d'aide de la part de {ORG}$",  # ORG has no regex signs
        "asks": f"({ORG}) demande à voir votre écran.",
        "reason": f"Motif : {REASON}",
        "phrase": "Mots de vérification : ",
        "warning": "N'autorisez ceci que si vous êtes au téléphone avec le service d'assistance.",
        "buttons": (
            "--ok-label=Autoriser l'aide",
            "--cancel-label=Refuser",
            "--extra-button=Autoriser à regarder seulement",
        ),
        "indicator": "^Session d'aide en cours",
        "end": "--ok-label=Terminer la session",
        "connected": "votre écran, avec le contrôle de la souris et du clavier.",
        "stop": "Cliquez sur « Terminer la session » pour l'arrêter immédiatement.",
    },
    "nl": {
        "locale": "nl_BE.UTF-8",
        "title": f"^Hulpverzoek van {ORG}$",
        "asks": f"van {ORG} vraagt om uw scherm te zien.",
        "reason": f"Reden: {REASON}",
        "phrase": "Controlewoorden: ",
        "warning": "Sta dit alleen toe als u met de helpdesk aan de telefoon bent.",
        "buttons": (
            "--ok-label=Hulp toestaan",
            "--cancel-label=Weigeren",
            "--extra-button=Alleen meekijken toestaan",
        ),
        "indicator": "^Hulpsessie actief",
        "end": "--ok-label=Sessie beëindigen",
        "connected": "uw scherm, met controle over muis en toetsenbord.",
        "stop": "Klik op \u201cSessie beëindigen\u201d om de sessie meteen te stoppen.",
    },
}


@pytest.mark.x11
@pytest.mark.parametrize("language", ["fr", "nl"])
def test_the_zenity_dialog_and_session_window_speak_the_users_language(
    fleet: tuple[Fleet, Broker], xvfb: Xvfb, language: str
) -> None:
    said = DIALOGS[language]
    group, broker = fleet
    agent = group.agent(f"zenity-{language}")
    assert agent.enroll(broker.token()).returncode == 0
    env = {**env_with(str(said["locale"])), "DISPLAY": xvfb.env["DISPLAY"]}
    agent.start("--reconnect-cap", "2", "--prompt", "dialog", env=env)
    wait_for(lambda: online(broker, agent.agent_id), 20, "agent online")
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        session = desk.request(agent.agent_id, "screen", reason=REASON).json()
        window = xvfb.wait_window(str(said["title"]))
        xvfb.screenshot(f"consent-dialog-{language}.png")
        argv = cmdline(xvfb.pid(window))
        text = next(a for a in argv if a.startswith("--text=")).removeprefix("--text=")
        assert str(said["asks"]) in text
        assert str(said["reason"]) in text  # as typed
        assert f"{said['phrase']}{session['phrase']}" in text
        assert all(w in WORD_LISTS[language] for w in session["phrase"].split())
        assert text.endswith(str(said["warning"]))
        assert all(button in argv for button in said["buttons"]), argv
        xvfb.click_button(window, lambda: desk.session(session["id"])["state"] == "active")
        # the audit holds the very text the user read, in their language
        assert audited_prompt(broker, "consent.granted", session["id"]) == text
        indicator = xvfb.wait_window(str(said["indicator"]))
        xvfb.screenshot(f"session-indicator-{language}.png")
        shown = cmdline(xvfb.pid(indicator))
        assert said["end"] in shown, shown
        window_text = next(a for a in shown if a.startswith("--text="))
        assert str(said["connected"]) in window_text and str(said["stop"]) in window_text
        ended = xvfb.click_button(
            indicator, lambda: (s := desk.session(session["id"]))["state"] == "ended" and s
        )
        assert ended["end_reason"] == "user"
        xvfb.wait_gone(str(said["indicator"]))
    finally:
        desk.close()
        agent.stop()


# the machine service: the signed-in user's helper says their language


async def test_the_machine_service_says_and_audits_in_the_signed_in_users_language(
    tmp_path: Path,
) -> None:
    hub = HelperHub(tmp_path / "run" / "agent.sock", active_uid=None, hostname="pc", os_name="L")
    service = AgentService(CONFIG, signed_in=hub.signed_in, hello=hub.hello)
    hub.service = service
    service.frontends.append(hub)
    sent: list[Message] = []
    service.attach(sent.append)
    await hub.start()
    loop = asyncio.get_running_loop()
    helper = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert hub.hello().language == ""  # nobody signed in: nothing said
        helper.setblocking(False)
        await loop.sock_connect(helper, str(hub.path))
        await loop.sock_sendall(helper, hp.HelperHello(language="nl").encode())
        welcome = json.loads(await loop.sock_recv(helper, 65536))
        assert welcome["helper"] is True
        hellos = [m for m in sent if isinstance(m, Hello)]
        assert hellos and hellos[-1].language == "nl" and hellos[-1].system
        service.on_message(
            ConsentRequest("abcdefgh1234", ORG, "Tech", "shell", REASON, "boom kaas fiets", 30.0)
        )
        prompt = hp.decode(await loop.sock_recv(helper, 65536))
        assert isinstance(prompt, hp.Prompt)
        await loop.sock_sendall(helper, hp.Allow("abcdefgh1234", via="dialog").encode())
        await loop.sock_recv(helper, 65536)  # the answer
        # a second answer is refused, in the user's language though root runs in C
        await loop.sock_sendall(helper, hp.Allow("abcdefgh1234", via="dialog").encode())
        refused = json.loads(await loop.sock_recv(helper, 65536))
        while "error" not in refused:  # the news of the first answer come first
            refused = json.loads(await loop.sock_recv(helper, 65536))
        assert refused["error"] == (
            "er wacht geen verzoek abcdefgh1234 (al beantwoord of verlopen)"
        ), refused
        decision = next(m for m in sent if isinstance(m, ConsentDecision))
        assert decision.granted
        assert decision.prompt.startswith(f"Tech van {ORG} vraagt om een opdrachtvenster")
        assert "Controlewoorden: boom kaas fiets" in decision.prompt
    finally:
        helper.close()
        await hub.close()
