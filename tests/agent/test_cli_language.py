"""``allowhelp-agent`` speaks the PC user's language: its help, argparse's own words,
its enrolment and configuration errors (#24).

Real parts: ``allowhelp-agent`` run as a subprocess with ``LANG=fr_BE.UTF-8``,
``nl_BE.UTF-8``, ``de_BE.UTF-8`` or a language we do not speak (``xx_XX``), a
real broker on 127.0.0.1 port 0 for the enrolment it refuses, and a port that
refuses connections for the broker that cannot be reached.
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.agent.cli import main
from allowhelp.agent.cliparse import ARGPARSE_WORDS, argparse_in_our_language
from allowhelp.agent.enrol import TOKEN_PROBLEMS, token_problem
from allowhelp.agent.i18n import speaking
from allowhelp.certs import token as token_module
from allowhelp.certs.token import EnrolmentToken
from harness import PY, Broker

LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
LOCALES = {"fr": "fr_BE.UTF-8", "nl": "nl_BE.UTF-8", "de": "de_BE.UTF-8", "en": "xx_XX.UTF-8"}

# What each language must say, and the English that must not be left in it.
HELP = {
    "fr": (
        "utilisation : allowhelp-agent",
        "arguments positionnels :",
        "options :",
        "afficher ce message d'aide et quitter",
        "inscrire ce PC avec un jeton du service d'assistance",
        "autoriser une demande d'aide en attente",
    ),
    "nl": (
        "gebruik: allowhelp-agent",
        "positionele argumenten:",
        "opties:",
        "deze hulptekst tonen en stoppen",
        "deze pc inschrijven met een token van de helpdesk",
        "een wachtend hulpverzoek toestaan",
    ),
    "de": (
        "Aufruf: allowhelp-agent",
        "Positionsargumente:",
        "Optionen:",
        "diese Hilfe anzeigen und beenden",
        "diesen PC mit einem Token vom Helpdesk registrieren",
        "eine wartende Hilfeanfrage erlauben",
    ),
    "en": (
        "usage: allowhelp-agent",
        "positional arguments:",
        "options:",
        "show this help message and exit",
        "enrol this PC with a token from the help desk",
        "allow a waiting help request",
    ),
}
ENGLISH_HELP = (
    "usage:",
    "positional arguments",
    "show this help message",
    "enrol this PC",
    "help request",
    "running session",
    "configuration folder",
    "debug logging",
)
ERROR_WORD = {"fr": "allowhelp-agent : erreur : ", "nl": "allowhelp-agent: fout: "}
ERROR_WORD |= {"de": "allowhelp-agent: Fehler: ", "en": "allowhelp-agent: error: "}
NOT_A_TOKEN = {
    "fr": "ceci n'est pas un jeton d'inscription allowhelp",
    "nl": "dit is geen inschrijvingstoken van allowhelp",
    "de": "dies ist kein allowhelp-Registrierungstoken",
    "en": "this is not an allowhelp enrolment token",
}
NOT_ENROLLED = {
    "fr": "cet agent n'est pas inscrit (",
    "nl": "deze agent is niet ingeschreven (",
    "de": "dieser Agent ist nicht registriert (",
    "en": "this agent is not enrolled (",
}
UNREACHABLE = {
    "fr": "impossible de joindre le serveur https://",
    "nl": "kan de server op https://",
    "de": "der Server unter https://",
    "en": "cannot reach the broker at https://",
}
IMPOSTOR = {
    "fr": "c'est peut-être un imposteur ; inscription annulée",
    "nl": "het kan een bedrieger zijn; er wordt niet ingeschreven",
    "de": "er könnte ein Betrüger sein; keine Registrierung",
    "en": "it may be an impostor; not enrolling",
}
REFUSED = {
    "fr": "le serveur a refusé d'inscrire ce PC : ",
    "nl": "de server weigerde deze pc in te schrijven: ",
    "de": "der Server hat die Registrierung dieses PCs abgelehnt: ",
    "en": "the broker refused to enrol this PC: ",
}
UNKNOWN_COMMAND = {
    "fr": "argument COMMANDE : choix invalide : 'bogus' (choisissez parmi 'enroll', ",
    "nl": "argument OPDRACHT: ongeldige keuze: 'bogus' (kies uit 'enroll', ",
    "de": "Argument BEFEHL: ungültige Auswahl: 'bogus' (wählen Sie aus 'enroll', ",
    "en": "argument COMMAND: invalid choice: 'bogus' (choose from 'enroll', ",
}
LANGUAGES = tuple(LOCALES)


def agent(language: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    env.pop("ALLOWHELP_CONFIG", None)
    env |= {"LANG": LOCALES[language], "HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg")}
    return subprocess.run(
        [PY, "-m", "allowhelp.agent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str], language: str) -> str:
    """The error, told as one line with the language's ``error`` word, exit 2."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(ERROR_WORD[language]), lines[0]
    return lines[0]


def english_left(text: str) -> list[str]:
    return [words for words in ENGLISH_HELP if words in text]


@pytest.mark.parametrize("language", LANGUAGES)
def test_help_is_in_the_users_language(language: str, tmp_path: Path) -> None:
    done = agent(language, "--help", home=tmp_path)
    assert done.returncode == 0, done.stderr
    for words in HELP[language]:
        assert words in done.stdout, (words, done.stdout)
    if language != "en":
        assert english_left(done.stdout) == []


@pytest.mark.parametrize("language", ["fr", "nl"])
@pytest.mark.parametrize("command", ["enroll", "run", "pending", "allow", "end", "history"])
def test_every_subcommands_help_is_translated(language: str, command: str, tmp_path: Path) -> None:
    done = agent(language, command, "--help", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(HELP[language][0] + f" {command}"), done.stdout
    assert english_left(done.stdout) == [], done.stdout


@pytest.mark.parametrize("language", LANGUAGES)
def test_argparse_errors_are_in_the_users_language(language: str, tmp_path: Path) -> None:
    done = agent(language, "bogus", home=tmp_path)
    assert done.returncode == 2
    usage, error = done.stderr.strip().splitlines()
    assert usage.startswith(HELP[language][0]), usage
    assert error.startswith(ERROR_WORD[language] + UNKNOWN_COMMAND[language]), error


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_bad_token_is_refused_in_the_users_language(language: str, tmp_path: Path) -> None:
    done = agent(language, "enroll", "hello", "--config", str(tmp_path / "a"), home=tmp_path)
    assert one_error_line(done, language).endswith(NOT_A_TOKEN[language])
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_unenrolled_configuration_is_told_in_the_users_language(
    language: str, tmp_path: Path
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    line = one_error_line(agent(language, "run", "--config", str(folder), home=tmp_path), language)
    assert NOT_ENROLLED[language] in line
    assert f"enroll {'JETON' if language == 'fr' else 'TOKEN'} --config {folder}" in line


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: every connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_unreachable_broker_is_told_in_the_users_language(
    language: str, refusing_port: int, tmp_path: Path
) -> None:
    url = f"https://127.0.0.1:{refusing_port}"
    token = EnrolmentToken(url, "s" * 43, "a" * 64).encode()
    done = agent(language, "enroll", token, "--config", str(tmp_path / "a"), home=tmp_path)
    line = one_error_line(done, language)
    assert UNREACHABLE[language] + f"127.0.0.1:{refusing_port}" in line
    assert not (tmp_path / "a").exists()


def test_the_brokers_refusals_are_told_in_the_users_language(
    broker: Broker, tmp_path: Path
) -> None:
    real = EnrolmentToken.decode(broker.token())
    wrong_pin = EnrolmentToken(real.url, real.secret, "0" * 64).encode()
    wrong_secret = EnrolmentToken(real.url, "x" * 43, real.ca_fingerprint).encode()
    for language in LANGUAGES:
        a, b = str(tmp_path / "a"), str(tmp_path / "b")
        done = agent(language, "enroll", wrong_pin, "--config", a, home=tmp_path)
        assert one_error_line(done, language).endswith(IMPOSTOR[language])
        done = agent(language, "enroll", wrong_secret, "--config", b, home=tmp_path)
        assert REFUSED[language] in one_error_line(done, language)
    assert not (tmp_path / "a" / "agent.json").exists()
    assert not (tmp_path / "b" / "agent.json").exists()


def test_the_token_words_marked_here_are_the_tokens_own() -> None:
    """certs/token.py has no catalog: enrol.py marks its words, and they must match."""
    own = {token_module.NOT_OURS, token_module.NEWER_VERSION}
    own |= {token_module.DAMAGED, token_module.MALFORMED}
    assert set(TOKEN_PROBLEMS) == own
    with speaking("fr"):
        detail = token_problem(f"{token_module.MALFORMED} (bad base64)")
        assert detail == "le jeton d'inscription est mal formé (bad base64)"
        assert token_problem("something else") == "something else"


def test_argparse_still_asks_for_the_words_we_translate() -> None:
    """A Python that renamed these would silently print English again."""
    source = inspect.getsource(argparse)
    core = ["usage: ", "positional arguments", "show this help message and exit"]
    core += ["%(prog)s: error: %(message)s\\n"]
    core += ["invalid choice: %(value)r (choose from %(choices)s)"]
    core += ["the following arguments are required: %s", "argument %(argument_name)s: %(message)s"]
    for words in core:
        assert words.replace("\\n", "\n") in ARGPARSE_WORDS
        assert f"'{words}'" in source or f'"{words}"' in source, words


def test_argparse_is_given_back_its_own_words(capsys: pytest.CaptureFixture[str]) -> None:
    """Only while the agent builds and parses its command line; afterwards, and in
    any other parser of this process, argparse is untouched."""
    before = (getattr(argparse, "_"), getattr(argparse, "ngettext"))  # noqa: B009
    with speaking("nl"), pytest.raises(SystemExit):
        main(["bogus"])
    assert "ongeldige keuze" in capsys.readouterr().err
    assert (getattr(argparse, "_"), getattr(argparse, "ngettext")) == before  # noqa: B009
    with speaking("nl"), argparse_in_our_language():
        parser = argparse.ArgumentParser(prog="x")
        parser.add_argument("--n", nargs=2)
        with pytest.raises(SystemExit):
            parser.parse_args(["--n", "1"])
    assert "2 argumenten verwacht" in capsys.readouterr().err
