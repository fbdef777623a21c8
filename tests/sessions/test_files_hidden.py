"""Files sessions never reach the per-user agent's own folder (its host key).

Real pieces as in ``test_files.py``: a broker, the user's own agent run as the local
user ``ahhide`` with its configuration where a real one lives
(``~/.config/allowhelp/agent``: host key, doorbell key, settings, all the user's
own), OpenSSH's sftp-server as that user. With the private host key a technician
could connect to the broker as this PC's agent, so no files session, read-write or
view only, may list, download or upload there: not by its path, not through a link
the user made, not through ``/proc``. Each refusal is a 403 ``path_hidden`` with
``files.refused`` on the record, and nothing of the key in the answer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from machinekit import CAN_RUN, WHY_NOT, local_users
from userkit import UserAgent, allowed_files, user_path

from harness import TECH, TECH_PW, Broker, Desk, online, staffed_broker, wait_for

USER = "ahhide"
FOLDER = ".config/allowhelp/agent"  # in the user's home: default_config_dir()
HOME = f"/home/{USER}"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


def as_user(*argv: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", *argv], check=True)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    with local_users(USER), staffed_broker(tmp_path_factory.mktemp("hidden")) as fleet:
        broker = fleet.brokers[0]
        as_user("mkdir", "-p", f"{HOME}/.config/allowhelp")
        agent = UserAgent(user_path(USER, FOLDER), user=USER)
        fleet.agents.append(agent)
        enrolled = agent.enroll(broker.token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start("--reconnect-cap", "2", "--prompt", "none")
        wait_for(lambda: online(broker, agent.agent_id), 30, "the user's agent to come online")
        as_user("ln", "-s", f"{HOME}/{FOLDER}", f"{HOME}/innocent")
        as_user("ln", "-s", f"{HOME}/{FOLDER}/host_key", f"{HOME}/keylink")
        as_user("ln", "-s", f"{HOME}/.config/./allowhelp//agent/../agent/", f"{HOME}/tricky")
        as_user("sh", "-c", f"echo ordinary > {HOME}/ordinary.txt")
        yield broker, agent


@pytest.fixture(scope="module")
def key(pc: tuple[Broker, UserAgent]) -> bytes:
    return user_path(USER, FOLDER, "host_key").read_bytes()


@pytest.fixture(scope="module")
def read_write(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    desk, session_id = allowed_files(*pc, "check the settings")
    yield desk, session_id
    desk.close()


@pytest.fixture(scope="module")
def view_only(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    broker, agent = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.client.post(
        "/api/v1/sessions",
        json={"agent_id": agent.agent_id, "kind": "files", "view_only": True, "reason": "look"},
    )
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["id"]
    agent.wait_pending(session_id)
    assert agent.cli("allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    yield desk, session_id
    desk.close()


def url(session_id: str, what: str = "files/content") -> str:
    return f"/api/v1/sessions/{session_id}/{what}"


def hidden_refusal(answer: httpx.Response, key: bytes) -> None:
    assert key not in answer.content and b"PRIVATE KEY" not in answer.content
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "path_hidden"
    assert "the allowhelp agent's own folder" in answer.json()["message"]


def refusals(broker: Broker, session_id: str) -> list[dict[str, Any]]:
    kept = broker.audit_records(session_id)
    return [r for r in kept if r["type"] == "files.refused"]


KEY_PATHS = (
    f"{FOLDER}/host_key",
    f"{HOME}/{FOLDER}/host_key",
    "innocent/host_key",  # a link to the folder
    "keylink",  # a link to the key itself
    "tricky/host_key",  # a link whose target climbs and pads
    f"/proc/self/root{HOME}/{FOLDER}/host_key",
    f"/proc/self/cwd/{FOLDER}/host_key",
)


@pytest.mark.parametrize("path", KEY_PATHS)
def test_the_agents_key_is_never_downloaded(
    pc: tuple[Broker, UserAgent], read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    broker, _ = pc
    desk, session_id = read_write
    hidden_refusal(desk.client.get(url(session_id), params={"path": path}), key)
    last = refusals(broker, session_id)[-1]
    assert last["code"] == "AH1510" and last["actor"] == f"technician:{TECH}"
    assert last["details"]["path"] == path and last["details"]["why"] == "path_hidden"
    assert last["details"]["resolved"] == f"{HOME}/{FOLDER}/host_key"
    assert last["details"]["hidden"] == f"{HOME}/{FOLDER}"
    ended = [r for r in broker.audit_records(session_id) if r["type"] == "files.transfer.failed"]
    assert ended[-1]["details"]["path"] == path  # the transfer's start has its end


@pytest.mark.parametrize("path", [FOLDER, f"{HOME}/{FOLDER}", "innocent", "tricky", "innocent/"])
def test_the_agents_folder_is_never_listed(
    read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    desk, session_id = read_write
    hidden_refusal(desk.client.get(url(session_id, "files"), params={"path": path}), key)


@pytest.mark.parametrize(
    "path", [f"{FOLDER}/.", f"{FOLDER}//host_key", ".config/allowhelp/x/../agent/host_key"]
)
def test_padded_and_climbing_paths_are_refused_before_the_pc(
    read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    desk, session_id = read_write
    got = desk.client.get(url(session_id), params={"path": path})
    assert got.status_code == 400 and got.json()["error"] == "bad_path", got.text
    assert key not in got.content


def test_a_listing_above_still_names_the_folder(read_write: tuple[Desk, str]) -> None:
    desk, session_id = read_write
    listed = desk.client.get(url(session_id, "files"), params={"path": ".config/allowhelp"})
    assert listed.status_code == 200, listed.text
    assert "agent" in [entry["name"] for entry in listed.json()]


@pytest.mark.parametrize("path", [f"{FOLDER}/host_key", f"{FOLDER}/new", "innocent/host_key"])
def test_nothing_is_uploaded_into_the_agents_folder(
    pc: tuple[Broker, UserAgent], read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    broker, _ = pc
    desk, session_id = read_write
    put = desk.client.put(url(session_id), params={"path": path}, content=b"forged key")
    hidden_refusal(put, key)
    assert user_path(USER, FOLDER, "host_key").read_bytes() == key
    assert not user_path(USER, FOLDER, "new").exists()
    folder = user_path(USER, FOLDER)
    assert [p.name for p in folder.iterdir() if ".allowhelp-" in p.name] == []
    last = refusals(broker, session_id)[-1]["details"]
    assert (last["path"], last["why"]) == (path, "path_hidden")
    ended = [r for r in broker.audit_records(session_id) if r["type"] == "files.transfer.failed"]
    assert ended[-1]["details"]["direction"] == "upload" and ended[-1]["details"]["path"] == path


def test_an_upload_onto_a_link_to_the_key_replaces_the_link_not_the_key(
    read_write: tuple[Desk, str], key: bytes
) -> None:
    desk, session_id = read_write
    link = user_path(USER, "keylink")
    put = desk.client.put(url(session_id), params={"path": "keylink"}, content=b"mine")
    assert put.status_code == 201, put.text
    assert not link.is_symlink() and link.read_bytes() == b"mine"
    assert user_path(USER, FOLDER, "host_key").read_bytes() == key
    as_user("ln", "-sf", f"{HOME}/{FOLDER}/host_key", f"{HOME}/keylink")  # for the others


def test_other_files_still_work(read_write: tuple[Desk, str]) -> None:
    desk, session_id = read_write
    got = desk.client.get(url(session_id), params={"path": "ordinary.txt"})
    assert got.status_code == 200 and got.content == b"ordinary\n"
    listed = desk.client.get(url(session_id, "files"), params={"path": "."})
    assert listed.status_code == 200, listed.text
    assert {"innocent", "keylink", "ordinary.txt"} <= {e["name"] for e in listed.json()}
    put = desk.client.put(url(session_id), params={"path": ".config/note"}, content=b"n")
    assert put.status_code == 201, put.text
    assert user_path(USER, ".config", "note").read_bytes() == b"n"


@pytest.mark.parametrize("path", [f"{FOLDER}/host_key", "innocent/host_key", "keylink"])
def test_a_view_only_session_never_reads_the_key_either(
    pc: tuple[Broker, UserAgent], view_only: tuple[Desk, str], key: bytes, path: str
) -> None:
    broker, _ = pc
    desk, session_id = view_only
    hidden_refusal(desk.client.get(url(session_id), params={"path": path}), key)
    hidden_refusal(desk.client.get(url(session_id, "files"), params={"path": "innocent"}), key)
    assert refusals(broker, session_id)[-1]["details"]["why"] == "path_hidden"
    got = desk.client.get(url(session_id), params={"path": "ordinary.txt"})
    assert got.status_code == 200 and got.content == b"ordinary\n"


def test_the_key_is_where_the_test_looks(key: bytes) -> None:
    assert b"PRIVATE KEY" in key  # the agent's real host key, read by root here
    assert Path(HOME, FOLDER, "agent.json").exists()


@pytest.mark.parametrize("path", [f"{FOLDER}/host_key/", "keylink/", "innocent/host_key/"])
def test_a_trailing_slash_does_not_reach_the_key_either(
    read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    desk, session_id = read_write
    got = desk.client.get(url(session_id), params={"path": path})
    assert got.status_code in (400, 403, 404), got.text
    assert key not in got.content and b"PRIVATE KEY" not in got.content


@pytest.mark.parametrize(
    "path", [".CONFIG/allowhelp/agent/host_key", ".config/AllowHelp/AGENT/host_key"]
)
def test_another_spelling_never_reaches_the_key(
    read_write: tuple[Desk, str], key: bytes, path: str
) -> None:
    # refused on a case-insensitive file system (the comparison is case-folded too);
    # here (case-sensitive) there is no such file: refused or not found, never the key
    desk, session_id = read_write
    got = desk.client.get(url(session_id), params={"path": path})
    assert got.status_code in (403, 404), got.text
    assert key not in got.content and b"PRIVATE KEY" not in got.content
