"""A files session through the machine service never reaches the signed-in user's
own agent folder.

The machine service's Hello names no folder to hide (its own configuration is
root's), but the user signed in may have enrolled a per-user agent of their own:
its private host key in ``~/.config/allowhelp/agent``, readable by the user's
sftp-server that the files session runs. The broker hides that default folder for
every files session whatever the Hello says (``fileshidden.UsersOwn``): 403
``path_hidden``, ``files.refused`` on the record, never the key.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine
from signedinkit import signed_in_pc

from harness import TECH, TECH_PW, Broker, Desk, wait_for

USER = "ahmhide"
HOME = f"/home/{USER}"
FOLDER = ".config/allowhelp/agent"
KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-one-but-the-users\n"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


def as_user(script: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", script], check=True)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with signed_in_pc(tmp_path_factory.mktemp("mhide"), (USER,)) as pc:
        as_user(f"mkdir -p {HOME}/{FOLDER} && echo '{{}}' > {HOME}/{FOLDER}/agent.json")
        as_user(f"printf '%s' '{KEY.decode()}' > {HOME}/{FOLDER}/host_key")
        as_user(f"ln -s {HOME}/{FOLDER} {HOME}/innocent && echo ordinary > {HOME}/ordinary.txt")
        yield pc


@pytest.fixture(scope="module")
def session(pc: tuple[Broker, Machine]) -> Iterator[tuple[Desk, str]]:
    broker, machine = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.request(machine.agent_id, "files", "look at the settings")
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    wait_for(
        lambda: any(p["session_id"] == session_id for p in machine.pending(USER)), 15, "prompt"
    )
    allowed = machine.cli(USER, "allow", session_id)
    assert allowed.returncode == 0, allowed.stderr
    desk.wait_state(session_id, "active")
    yield desk, session_id
    desk.close()


@pytest.mark.parametrize(
    "path", [f"{FOLDER}/host_key", f"{HOME}/{FOLDER}/host_key", "innocent/host_key"]
)
def test_the_users_own_agent_key_is_never_downloaded(
    pc: tuple[Broker, Machine], session: tuple[Desk, str], path: str
) -> None:
    broker, _ = pc
    desk, session_id = session
    got = desk.client.get(f"/api/v1/sessions/{session_id}/files/content", params={"path": path})
    assert KEY not in got.content and b"PRIVATE KEY" not in got.content
    assert got.status_code == 403, got.text
    assert got.json()["error"] == "path_hidden"
    refused = [r for r in broker.audit_records(session_id) if r["type"] == "files.refused"]
    last = refused[-1]["details"]
    assert (last["path"], last["why"]) == (path, "path_hidden")
    assert last["resolved"] == f"{HOME}/{FOLDER}/host_key"


def test_its_folder_is_never_listed_and_nothing_lands_there(session: tuple[Desk, str]) -> None:
    desk, session_id = session
    base = f"/api/v1/sessions/{session_id}/files"
    listed = desk.client.get(base, params={"path": "innocent"})
    assert listed.status_code == 403 and listed.json()["error"] == "path_hidden", listed.text
    put = desk.client.put(base + "/content", params={"path": f"{FOLDER}/host_key"}, content=b"x")
    assert put.status_code == 403 and put.json()["error"] == "path_hidden", put.text
    with open(f"{HOME}/{FOLDER}/host_key", "rb") as kept:
        assert kept.read() == KEY


def test_the_users_other_files_still_work(session: tuple[Desk, str]) -> None:
    desk, session_id = session
    base = f"/api/v1/sessions/{session_id}/files"
    got = desk.client.get(base + "/content", params={"path": "ordinary.txt"})
    assert got.status_code == 200 and got.content == b"ordinary\n", got.text
    above = desk.client.get(base, params={"path": ".config/allowhelp"})
    assert above.status_code == 200 and "agent" in [e["name"] for e in above.json()], above.text
