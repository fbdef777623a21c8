"""Files under the machine service: root holds the tunnel, the user's helper touches the files.

The machine service runs as root; the signed-in user's session helper starts
sftp-server as that user and hands root only its socket end. What the
technician writes lands as the user's file; what the user cannot read, the
technician cannot either; chat reaches the user's CLI through the helper socket
and nobody else's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine
from signedinkit import signed_in_pc

from harness import TECH, TECH_PW, Broker, Desk, wait_for

USERS = ("ahmfilea", "ahmfileb")

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    # the newest helper is the one signed in
    helpers = (USERS[1], USERS[0])
    with signed_in_pc(tmp_path_factory.mktemp("mfiles"), USERS, helpers=helpers) as pc:
        yield pc


def test_files_are_the_signed_in_users_and_never_roots(pc: tuple[Broker, Machine]) -> None:
    broker, machine = pc
    alice, bob = USERS
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.request(machine.agent_id, "files", "fetch the log", ticket="HD-77")
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        wait_for(
            lambda: any(p["session_id"] == session_id for p in machine.pending(alice)), 15, "prompt"
        )
        assert machine.cli(bob, "allow", session_id).returncode != 0  # not bob's to allow
        allowed = machine.cli(alice, "allow", session_id)
        assert allowed.returncode == 0, allowed.stderr
        desk.wait_state(session_id, "active")
        base = f"/api/v1/sessions/{session_id}/files"
        data = secrets.token_bytes(3 * 1024 * 1024)
        put = desk.client.put(base + "/content", params={"path": "from-desk.bin"}, content=data)
        assert put.status_code == 201, put.text
        assert put.json()["sha256"] == hashlib.sha256(data).hexdigest()
        landed = Path("/home", alice, "from-desk.bin")
        assert landed.read_bytes() == data
        assert landed.owner() == alice  # written by alice's sftp-server, not by root
        got = desk.client.get(base + "/content", params={"path": str(landed)})
        assert got.status_code == 200 and got.content == data
        # bob's home is his alone (0700 from useradd here): alice's rights are the limit
        Path("/home", bob).chmod(0o700)
        theirs = desk.client.get(base, params={"path": f"/home/{bob}"})
        assert theirs.status_code == 403, theirs.text
        shadow = desk.client.get(base + "/content", params={"path": "/etc/shadow"})
        assert shadow.status_code == 403
        into_root = desk.client.put(base + "/content", params={"path": "/root/x"}, content=b"x")
        assert into_root.status_code in (403, 404), into_root.text
        assert not Path("/root/x").exists()
        # chat through the helper socket: alice sees it, bob is refused
        sent = desk.client.post(f"/api/v1/sessions/{session_id}/messages", json={"text": "hi"})
        assert sent.status_code == 201, sent.text
        shown = wait_for(
            lambda: json.loads(machine.cli(alice, "messages", session_id, "--json").stdout or "[]"),
            15,
            "the message at alice's CLI",
        )
        assert shown[-1]["text"] == "hi"
        assert machine.cli(bob, "messages", session_id).returncode != 0
        assert machine.cli(bob, "chat", session_id, "I am alice").returncode != 0
        said = machine.cli(alice, "chat", session_id, "got it")
        assert said.returncode == 0, said.stderr
        wait_for(
            lambda: (
                desk.client.get(f"/api/v1/sessions/{session_id}/messages").json()[-1]["text"]
                == "got it"
            ),
            15,
            "alice's answer at the broker",
        )
        assert machine.cli(alice, "end", session_id).returncode == 0
        ended = desk.wait_state(session_id, "ended")
        assert ended["end_reason"] == "user"
    finally:
        desk.close()
