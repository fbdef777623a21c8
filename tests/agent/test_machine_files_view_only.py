"""Files, view only, under the machine service: the user's session helper starts
sftp-server read-only (``-R``) for a view-only grant, and shows the prompt the
service records.

Root holds the tunnel; the signed-in user's helper starts the program (as in
``test_machine_files.py``). The broker refuses uploads first (403 ``view_only``);
that the PC would refuse a write too is shown by the program's command line: the
user's sftp-server runs with ``-R``.

An older helper (one that says nothing of view-only files in its hello) as the
user's newest: the service's Hello says it cannot, and the broker refuses the
request at once, the user never asked.

The prompt: the user's helper (a second one, with the dialog front-end and a
stand-in ``zenity`` that keeps the text it is given) shows "see your files, view
only", the very text ``consent.granted`` records; ``pending`` says view only too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine
from signedinkit import signed_in_pc

from allowhelp.agent.machinesocket import machine_socket
from harness import TECH, TECH_PW, Broker, Desk, wait_for

USER = "ahmview"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with signed_in_pc(tmp_path_factory.mktemp("mview"), [USER]) as pc:
        yield pc


def test_the_users_helper_starts_a_read_only_sftp_server(pc: tuple[Broker, Machine]) -> None:
    broker, machine = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.client.post(
            "/api/v1/sessions",
            json={
                "agent_id": machine.agent_id,
                "kind": "files",
                "view_only": True,
                "reason": "read the log",
            },
        )
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        wait_for(
            lambda: any(p["session_id"] == session_id for p in machine.pending(USER)), 15, "prompt"
        )
        assert machine.cli(USER, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        listed = desk.client.get(f"/api/v1/sessions/{session_id}/files", params={"path": "."})
        assert listed.status_code == 200, listed.text
        found = subprocess.run(
            ["pgrep", "-a", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
        )
        lines = found.stdout.decode().splitlines()
        assert lines and all(" -R " in f" {line} " for line in lines), lines
        put = desk.client.put(
            f"/api/v1/sessions/{session_id}/files/content", params={"path": "x"}, content=b"x"
        )
        assert put.status_code == 403 and put.json()["error"] == "view_only"
    finally:
        desk.close()


# A zenity that keeps the first text it is asked to show (the consent question) in
# ``shown`` and waits, as a dialog does, until the helper closes it.
FAKE_ZENITY = """#!/bin/sh
for a in "$@"; do
  case "$a" in --text=*) [ -e "{shown}" ] || printf '%s' "${{a#--text=}}" > "{shown}";; esac
done
exec sleep 60
"""


def test_the_users_helper_shows_view_only_as_recorded(pc: tuple[Broker, Machine]) -> None:
    broker, machine = pc
    tools = machine.root / "dialog-bin"
    tools.mkdir(exist_ok=True)
    said = machine.root / "dialog-said"
    said.mkdir(exist_ok=True)
    os.chmod(said, 0o777)
    shown = said / "prompt.txt"
    (tools / "zenity").write_text(FAKE_ZENITY.format(shown=shown))
    (tools / "zenity").chmod(0o755)
    env = ("DISPLAY=:99", f"PATH={tools}:/usr/bin:/bin")
    argv = machine.as_user(
        USER, "-m", "allowhelp.agent.cli", "session", "--prompt", "dialog", env=env
    )
    argv += ["--config", str(machine.config)]
    with (machine.root / "dialog-helper.log").open("ab") as log:
        helper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.request(machine.agent_id, "files", "read the log", view_only=True)
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        try:
            wait_for(shown.exists, 20, "the consent question in the user's dialog")
        except AssertionError:
            said_log = (machine.root / "dialog-helper.log").read_text()
            raise AssertionError(f"helper log:\n{said_log}") from None
        text = shown.read_text()
        assert "asks to see your files, view only" in text, text
        [waiting] = [p for p in machine.pending(USER) if p["session_id"] == session_id]
        assert waiting["view_only"] is True
        listed = machine.cli(USER, "pending")
        assert "your files, view only" in listed.stdout, listed.stdout
        assert machine.cli(USER, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        records = broker.audit_records(session_id)
        [granted] = [r for r in records if r["type"] == "consent.granted"]
        assert granted["details"]["prompt"] == text
    finally:
        desk.close()
        helper.terminate()  # runuser passes it on to the helper
        helper.wait(15)


# A session helper older than view-only files: its hello says nothing of them.
OLDER_HELPER = """
import socket, time
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect({path!r})
conn.send(b'{{"type": "helper", "language": "en", "desktop": "an older helper"}}')
time.sleep(120)
"""


def test_an_older_helper_is_never_asked_for_view_only_files(pc: tuple[Broker, Machine]) -> None:
    """The user's newest helper is older than view-only files (it would start
    sftp-server read-write): the service's Hello says so, and the broker refuses the
    request at once (409 ``files_view_only_unsupported``), the user never asked."""
    broker, machine = pc
    code = OLDER_HELPER.format(path=str(machine_socket(machine.config)))
    older = subprocess.Popen(machine.as_user(USER, "-c", code), stdin=subprocess.DEVNULL)
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        wait_for(
            lambda: machine.agent_row(broker)["desktop"] == "an older helper",
            20,
            "the older helper to be the signed-in user's newest",
        )
        refused = desk.request(machine.agent_id, "files", "only look", view_only=True)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "files_view_only_unsupported"
        assert not machine.pending(USER)  # never put to the user
        sessions = {s["reason"]: s for s in desk.client.get("/api/v1/sessions").json()}
        assert sessions["only look"]["end_reason"] == "unsupported"
    finally:
        desk.close()
        older.terminate()
        older.wait(15)
    wait_for(
        lambda: machine.agent_row(broker)["desktop"] != "an older helper",
        20,
        "the user's own helper to be the newest again",
    )
