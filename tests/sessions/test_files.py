"""Files sessions for real: a per-user agent run as a local user, sftp-server as that user.

A real broker, a real agent (as the user ``ahfiles``, through ``runuser``),
OpenSSH's real sftp-server, the console API through httpx. Every byte that
goes up comes back down the same; every path the rules refuse is refused
with a one-line error, and the session goes on working after each.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from machinekit import CAN_RUN, WHY_NOT
from receiverkit import SECRET, Receiver, receiver
from userkit import UserAgent, user_agent_online, user_path

from harness import TECH, TECH_PW, Broker, Desk, broker_cli, wait_for

USER = "ahfiles"
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, tuple[str, ...]]]:
    secret = tmp_path_factory.mktemp("hook") / "secret"
    secret.write_bytes(SECRET)
    with receiver() as state:
        yield state, ("--webhook", state.url, "--webhook-secret-file", str(secret))


@pytest.fixture(scope="module")
def pc(
    tmp_path_factory: pytest.TempPathFactory, hook: tuple[Receiver, tuple[str, ...]]
) -> Iterator[tuple[Broker, UserAgent]]:
    with user_agent_online(tmp_path_factory.mktemp("files"), USER, hook[1]) as made:
        yield made


@pytest.fixture(scope="module")
def files_session(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    broker, agent = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    answer = desk.request(agent.agent_id, "files", "copy the report", ticket="HD-1234")
    assert answer.status_code == 201, answer.text
    session_id = answer.json()["id"]
    assert answer.json()["ticket"] == "HD-1234"
    prompt = agent.wait_pending(session_id)
    assert prompt["kind"] == "files"
    allowed = agent.cli("allow", session_id)
    assert allowed.returncode == 0, allowed.stderr
    desk.wait_state(session_id, "active")
    yield desk, session_id
    desk.close()


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


def files_url(session_id: str, what: str = "files/content") -> str:
    return f"/api/v1/sessions/{session_id}/{what}"


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".allowhelp-" in p.name]


def test_a_3_mib_upload_and_its_download_are_the_same_bytes(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = files_session
    data = secrets.token_bytes(3 * MIB + 17)
    digest = hashlib.sha256(data).hexdigest()
    put = desk.client.put(files_url(session_id), params={"path": "report.bin"}, content=data)
    assert put.status_code == 201, put.text
    assert put.json() == {"path": "report.bin", "size": len(data), "sha256": digest}
    on_disk = user_path(USER, "report.bin")
    assert on_disk.read_bytes() == data
    assert on_disk.stat().st_uid == user_path(USER).stat().st_uid  # the user's, not root's
    assert leftovers(user_path(USER)) == []
    got = desk.client.get(files_url(session_id), params={"path": "report.bin"})
    assert got.status_code == 200, got.text
    assert got.content == data
    assert got.headers["content-length"] == str(len(data))
    listing = desk.client.get(files_url(session_id, "files"), params={"path": "."})
    assert listing.status_code == 200, listing.text
    entry = next(e for e in listing.json() if e["name"] == "report.bin")
    assert entry["type"] == "file" and entry["size"] == len(data) and entry["mtime"] > 0
    records = [r for r in audit(broker) if r["target"] == session_id]
    done = [r["details"] for r in records if r["type"] == "files.transfer.done"]
    assert {(d["direction"], d["path"], d["size"], d["sha256"]) for d in done} == {
        ("upload", "report.bin", len(data), digest),
        ("download", "report.bin", len(data), digest),
    }
    kinds = [r["type"] for r in records]
    # the start of each transfer is on the record before its end
    assert kinds.index("files.transfer.started") < kinds.index("files.transfer.done")


def test_an_upload_replaces_a_file_and_zero_bytes_work(files_session: tuple[Desk, str]) -> None:
    desk, session_id = files_session
    target = {"path": "notes.txt"}
    assert desk.client.put(files_url(session_id), params=target, content=b"old").status_code == 201
    assert desk.client.put(files_url(session_id), params=target, content=b"").status_code == 201
    assert user_path(USER, "notes.txt").read_bytes() == b""
    got = desk.client.get(files_url(session_id), params=target)
    assert got.status_code == 200 and got.content == b""


@pytest.mark.parametrize(
    ("raw_query", "needle"),
    [
        ("path=../etc/passwd", '".." component'),
        ("path=a/../../b", '".." component'),
        ("path=bad%00name", "NUL"),
        ("path=two%0Alines", "line break"),
        ("path=%FF%FE", "not UTF-8"),
        ("path=", "empty"),
    ],
)
def test_bad_paths_are_refused_before_the_pc_sees_them(
    files_session: tuple[Desk, str], raw_query: str, needle: str
) -> None:
    desk, session_id = files_session
    for method in ("GET", "PUT"):
        answer = desk.client.request(
            method,
            files_url(session_id) + "?" + raw_query,
            content=b"x" if method == "PUT" else None,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "bad_path" and needle in answer.json()["message"]


def test_what_the_user_may_not_touch_is_refused_and_the_session_goes_on(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    desk, session_id = files_session
    shadow = desk.client.get(files_url(session_id), params={"path": "/etc/shadow"})
    assert shadow.status_code == 403 and shadow.json()["error"] == "permission_denied"
    folder = desk.client.get(files_url(session_id), params={"path": "/etc"})
    assert folder.status_code == 400 and folder.json()["error"] == "is_a_folder"
    into_etc = desk.client.put(files_url(session_id), params={"path": "/etc/evil"}, content=b"x")
    assert into_etc.status_code == 403, into_etc.text
    assert not Path("/etc/evil").exists()
    nowhere = desk.client.put(files_url(session_id), params={"path": "no/such/x"}, content=b"x")
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "no_such_folder"
    missing = desk.client.get(files_url(session_id), params={"path": "nothing-here"})
    assert missing.status_code == 404 and missing.json()["error"] == "no_such_file"
    onto_folder = desk.client.put(files_url(session_id), params={"path": "/tmp"}, content=b"x")
    assert onto_folder.status_code == 400 and onto_folder.json()["error"] == "is_a_folder"
    not_a_folder = desk.client.get(files_url(session_id, "files"), params={"path": ".bashrc"})
    assert not_a_folder.status_code == 400 and not_a_folder.json()["error"] == "not_a_folder"
    still = desk.client.get(files_url(session_id, "files"), params={"path": "/"})
    assert still.status_code == 200 and any(e["name"] == "etc" for e in still.json())
    # every path the PC was asked about is on the record, refused ones as failed
    records = [r for r in audit(pc[0]) if r["target"] == session_id]
    started = [r for r in records if r["type"] == "files.transfer.started"]
    failed = {r["details"]["path"] for r in records if r["type"] == "files.transfer.failed"}
    probed = {"/etc/shadow", "/etc", "/etc/evil", "no/such/x", "nothing-here", "/tmp"}
    assert probed <= {r["details"]["path"] for r in started}
    assert probed <= failed


def test_an_upload_cut_halfway_leaves_no_file_under_any_name(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = files_session
    url = urlsplit(broker.url)
    context = broker.ssl_context()
    head = (
        f"PUT {files_url(session_id)}?path=cut.bin HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nCookie: {desk.cookie_header()}\r\n"
        f"X-CSRF-Token: {desk.csrf}\r\nContent-Length: {2 * MIB}\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((url.hostname or "", url.port or 443)) as raw,
        context.wrap_socket(raw, server_hostname=url.hostname) as tls,
    ):
        tls.sendall(head + secrets.token_bytes(MIB))
    failed = wait_for(
        lambda: [
            r
            for r in audit(broker)
            if r["type"] == "files.transfer.failed" and r["details"]["path"] == "cut.bin"
        ],
        20,
        "the cut upload on the record",
    )
    assert failed[0]["details"]["ok"] is False
    assert not user_path(USER, "cut.bin").exists()
    assert leftovers(user_path(USER)) == []
    again = desk.client.put(files_url(session_id), params={"path": "cut.bin"}, content=b"whole")
    assert again.status_code == 201
    assert user_path(USER, "cut.bin").read_bytes() == b"whole"


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 1 MiB file system in the user's home (tmpfs): a PC whose disk is full."""
    folder = user_path(USER, "small")
    folder.mkdir(exist_ok=True)
    uid = user_path(USER).stat().st_uid
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=1m,uid={uid},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_on_the_pc_is_a_clear_error_and_leaves_nothing(
    files_session: tuple[Desk, str], small_disk: Path
) -> None:
    desk, session_id = files_session
    data = secrets.token_bytes(3 * MIB)
    full = desk.client.put(files_url(session_id), params={"path": "small/big.bin"}, content=data)
    assert full.status_code == 409, full.text
    assert full.json()["error"] == "pc_refused" and "disk full" in full.json()["message"]
    assert list(small_disk.iterdir()) == []  # neither the file nor its temporary name
    fits = desk.client.put(files_url(session_id), params={"path": "small/ok.txt"}, content=b"ok")
    assert fits.status_code == 201
    assert (small_disk / "ok.txt").read_bytes() == b"ok"


def test_a_huge_folder_is_listed_whole(files_session: tuple[Desk, str]) -> None:
    desk, session_id = files_session
    folder = user_path(USER, "many")
    subprocess.run(
        ["runuser", "-u", USER, "--", "/usr/bin/python3", "-c",
         f"import os; os.mkdir({str(folder)!r}); "
         f"[open(os.path.join({str(folder)!r}, f'f{{i:05}}'), 'w').close() for i in range(20000)]"],
        check=True,
    )  # fmt: skip
    listing = desk.client.get(files_url(session_id, "files"), params={"path": str(folder)})
    assert listing.status_code == 200
    names = {e["name"] for e in listing.json()}
    assert len(names) == 20000 and "f19999" in names


def test_only_the_consented_technician_reaches_the_files(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    _, session_id = files_session
    broker.add_user("mallory", "mallory password 123")
    other = Desk.login(broker, "mallory", "mallory password 123")
    try:
        for answer in (
            other.client.get(files_url(session_id), params={"path": ".bashrc"}),
            other.client.get(files_url(session_id, "files"), params={"path": "."}),
            other.client.put(files_url(session_id), params={"path": "x"}, content=b"x"),
        ):
            assert answer.status_code == 404, answer.text
        other.client.headers.pop("X-CSRF-Token")
        no_csrf = other.client.put(files_url(session_id), params={"path": "x"}, content=b"x")
        assert no_csrf.status_code == 403
    finally:
        other.close()
    assert not user_path(USER, "x").exists()


def test_a_root_agent_never_serves_files(tmp_path: Path) -> None:
    """The per-user agent run as root refuses: files are the user's, never root's."""
    from harness import running_fleet

    with running_fleet(tmp_path) as (_, broker, agent):
        desk = Desk.login(broker, TECH, TECH_PW)
        session_id = desk.request(agent.agent_id, "files").json()["id"]
        from harness import agent_call, wait_pending

        wait_pending(agent, session_id)
        assert agent_call(agent, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        answer = desk.client.get(files_url(session_id, "files"), params={"path": "/"})
        assert answer.status_code == 502, answer.text
        ended = desk.wait_state(session_id, "ended")
        assert ended["end_reason"] == "error"
        failed = [r for r in audit(broker) if r["type"] == "session.failed"]
        assert any("never as root" in r["details"]["error"] for r in failed), failed
        desk.close()


def test_chat_goes_both_ways_and_hostile_text_stays_text(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    _, agent = pc
    desk, session_id = files_session
    url = f"/api/v1/sessions/{session_id}/messages"
    sent = desk.client.post(url, json={"text": "hello <b>you</b>\x1b[31m red\x07"})
    assert sent.status_code == 201, sent.text
    assert sent.json()["text"] == "hello <b>you</b>[31m red"
    shown = agent.cli("messages", session_id, "--json")
    assert shown.returncode == 0, shown.stderr
    lines = json.loads(shown.stdout)
    assert lines[-1]["text"] == "hello <b>you</b>[31m red"
    assert set(lines[-1]) == {"from", "text", "ts"}
    plain = agent.cli("messages", session_id)
    assert "\x1b" not in plain.stdout and "hello <b>you</b>[31m red" in plain.stdout
    said = agent.cli("chat", session_id, "thanks\x1b]0;owned\x07 it works")
    assert said.returncode == 0, said.stderr
    transcript = wait_for(
        lambda: (m := desk.client.get(url).json()) and len(m) >= 2 and m,
        15,
        "the user's message at the broker",
    )
    assert transcript[-1]["text"] == "thanks]0;owned it works"
    assert transcript[-1]["from"] == f"user@{agent.agent_id}"
    assert transcript[0]["from"] == f"technician:{TECH}"
    assert set(transcript[0]) == {"from", "text", "ts"}


def test_bad_chat_messages_get_clear_errors(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    _, agent = pc
    desk, session_id = files_session
    url = f"/api/v1/sessions/{session_id}/messages"
    huge = desk.client.post(url, json={"text": "x" * MIB})
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    long = desk.client.post(url, json={"text": "x" * 2001})
    assert long.status_code == 413
    for body in ({"text": ""}, {"text": 5}, {}):
        assert desk.client.post(url, json=body).status_code == 400
    too_long = agent.cli("chat", session_id, "y" * 2001)
    assert too_long.returncode != 0 and "at most 2000" in too_long.stderr
    assert "Traceback" not in too_long.stderr
    stranger = agent.cli("chat", "NoSuchSession12", "hi")
    assert stranger.returncode != 0 and "no running session" in stranger.stderr
    assert desk.client.post(url, json={"text": "still here"}).status_code == 201


def test_notes_by_the_technician_alone_and_on_the_record(
    pc: tuple[Broker, UserAgent], files_session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = files_session
    url = f"/api/v1/sessions/{session_id}"
    changed = desk.client.patch(url, json={"notes": "toner replaced\nprinter OK\x1b[2J"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["notes"] == "toner replaced\nprinter OK[2J"
    assert desk.session(session_id)["notes"] == "toner replaced\nprinter OK[2J"
    assert desk.client.patch(url, json={"notes": 5}).status_code == 400
    assert desk.client.patch(url, json={"state": "ended"}).status_code == 400
    assert desk.client.patch(url, json={"notes": "n" * 10_001}).status_code == 400
    broker.add_user("eve", "eve password 1234")
    other = Desk.login(broker, "eve", "eve password 1234")
    try:
        assert other.client.patch(url, json={"notes": "mine now"}).status_code == 404
    finally:
        other.close()
    noted = [r for r in audit(broker) if r["type"] == "session.notes"]
    assert noted[-1]["details"]["notes"] == "toner replaced\nprinter OK[2J"
    assert noted[-1]["details"]["ticket"] == "HD-1234"
    requested = next(
        r for r in audit(broker) if r["type"] == "session.requested" and r["target"] == session_id
    )
    assert requested["details"]["ticket"] == "HD-1234"


def test_the_end_record_holds_the_transcript_digest_and_the_report_goes_out(
    pc: tuple[Broker, UserAgent],
    files_session: tuple[Desk, str],
    hook: tuple[Receiver, tuple[str, ...]],
) -> None:
    broker, _ = pc
    desk, session_id = files_session
    transcript = desk.client.get(f"/api/v1/sessions/{session_id}/messages").json()
    assert len(transcript) >= 3
    assert desk.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 200
    digest = hashlib.sha256()
    for line in transcript:  # the rule in docs/integrations.md
        digest.update(json.dumps(line, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    ended = next(
        r for r in audit(broker) if r["type"] == "session.ended" and r["target"] == session_id
    )
    assert ended["details"]["transcript_sha256"] == digest.hexdigest()
    assert ended["details"]["chat_messages"] == len(transcript)
    assert ended["details"]["bytes_to_agent"] > 3 * MIB  # the uploads, counted
    gone = desk.client.get(files_url(session_id, "files"), params={"path": "."})
    assert gone.status_code == 404
    late = desk.client.post(f"/api/v1/sessions/{session_id}/messages", json={"text": "hi"})
    assert late.status_code == 404
    report = wait_for(lambda: hook[0].by_session(session_id), 20, "the session report")
    assert hook[0].refused == []
    assert report["kind"] == "files" and report["ticket"] == "HD-1234"
    assert report["notes"] == "toner replaced\nprinter OK[2J"
    assert report["end_reason"] == "technician" and report["consent"]["decision"] == "granted"
    assert report["chat"] == transcript
    uploads = [t for t in report["file_transfers"] if t["path"] == "report.bin"]
    assert {t["direction"] for t in uploads} == {"upload", "download"}
    assert all(t["ok"] and len(t["sha256"]) == 64 for t in uploads)
    cut = [t for t in report["file_transfers"] if t["path"] == "cut.bin" and not t["ok"]]
    assert cut and "cut" in cut[0]["error"]
