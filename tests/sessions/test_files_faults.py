"""Files sessions when things go wrong: cut downloads, ends mid-upload, modes, sizes.

The same real pieces as ``test_files.py`` (a broker, the user's agent run as a
local user, OpenSSH's sftp-server): each start has an end on the record, a
session's end leaves no temporary file, an upload keeps a file's mode, and a
declared size over the limit is refused before anything happens.
"""

from __future__ import annotations

import json
import os
import posixpath
import pwd
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from machinekit import CAN_RUN, WHY_NOT
from userkit import UserAgent, allowed_files, user_agent_online, user_path

from allowhelp import runtime
from allowhelp.agent.files import files_command
from allowhelp.agent.news import transfer_text
from allowhelp.broker.sessions.filepaths import upload_names
from allowhelp.protocol.control import FileTransfer
from harness import Broker, Desk, broker_cli, wait_for

USER = "ahfaults"
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    with user_agent_online(tmp_path_factory.mktemp("faults"), USER) as made:
        yield made


def new_session(pc: tuple[Broker, UserAgent]) -> tuple[Desk, str]:
    return allowed_files(*pc, "faults")


@pytest.fixture
def session(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    desk, session_id = new_session(pc)
    yield desk, session_id
    desk.close()


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


def transfers(broker: Broker, session_id: str, kind: str, path: str) -> list[dict[str, Any]]:
    return [
        r["details"]
        for r in audit(broker)
        if r["target"] == session_id and r["type"] == kind and r["details"]["path"] == path
    ]


def listing_url(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/files"


def files_url(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/files/content"


def as_user(code: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", "/usr/bin/python3", "-c", code], check=True)


def raw_tls(broker: Broker) -> tuple[socket.socket, ssl.SSLSocket]:
    url = urlsplit(broker.url)
    raw = socket.create_connection((url.hostname or "", url.port or 443))
    return raw, broker.ssl_context().wrap_socket(raw, server_hostname=url.hostname)


def request_head(broker: Broker, desk: Desk, method: str, target: str, extra: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {urlsplit(broker.url).netloc}\r\n"
        f"Cookie: {desk.cookie_header()}\r\nX-CSRF-Token: {desk.csrf}\r\n{extra}\r\n"
    ).encode()


def leftovers() -> list[str]:
    return [p.name for p in user_path(USER).iterdir() if ".allowhelp-" in p.name]


def read_answer(tls: ssl.SSLSocket) -> str:
    """What the broker answers, up to its JSON body's end (or the connection's)."""
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


# 1. a download the browser abandons has its end on the record


@pytest.mark.parametrize("read_first", [2 * MIB, 0])
def test_an_abandoned_download_ends_on_the_record(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str], read_first: int
) -> None:
    """Cut mid-stream, or gone before the first byte: while the PC (its sftp-server
    stopped) had not answered yet, so the response starts with the browser gone."""
    broker, _ = pc
    desk, session_id = session
    name = f"big-{read_first}.bin"
    big = str(user_path(USER, name))
    as_user(f"import os; open({big!r}, 'wb').close(); os.truncate({big!r}, {512 * MIB})")
    assert desk.client.get(listing_url(session_id), params={"path": "."}).status_code == 200
    raw, tls = raw_tls(broker)
    with stopped_sftp_server(stop=read_first == 0), raw, tls:
        tls.sendall(request_head(broker, desk, "GET", f"{files_url(session_id)}?path={name}"))
        got = 0
        while got < read_first:  # mid-stream
            got += len(tls.recv(65536))
    failed = wait_for(
        lambda: transfers(broker, session_id, "files.transfer.failed", name),
        20,
        "the abandoned download's end on the record",
    )
    assert failed[0]["ok"] is False and "cut" in failed[0]["error"]
    assert failed[0]["size"] < 512 * MIB
    assert len(transfers(broker, session_id, "files.transfer.started", name)) == 1
    # and the session goes on
    again = desk.client.get(listing_url(session_id), params={"path": "."})
    assert again.status_code == 200, again.text


@contextmanager
def stopped_sftp_server(*, stop: bool) -> Iterator[None]:
    """The user's sftp-server (the one this module's agent started) stopped for the
    block and a second after it (the browser gone meanwhile), then let go."""
    found = subprocess.run(
        ["pgrep", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
    )
    pids = [int(pid) for pid in found.stdout.split()] if stop else []
    assert pids or not stop, "no sftp-server of the user's running"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
        time.sleep(1)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextmanager
def put_started(
    broker: Broker, desk: Desk, session_id: str, name: str, declared: int, first: bytes
) -> Iterator[ssl.SSLSocket]:
    """An upload of ``name`` saying ``declared`` bytes, ``first`` of them sent; the
    connection, open for the rest (or for the answer)."""
    raw, tls = raw_tls(broker)
    with raw, tls:
        head = request_head(
            broker, desk, "PUT", f"{files_url(session_id)}?path={name}",
            f"Content-Length: {declared}\r\n",
        )  # fmt: skip
        tls.sendall(head + first)
        yield tls


# 2. a session ended mid-upload leaves no temporary file


def test_a_session_ended_mid_upload_leaves_no_temporary_file(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    with put_started(broker, desk, session_id, "mid.bin", 8 * MIB, secrets.token_bytes(MIB)):
        wait_for(leftovers, 20, "the upload's temporary file")
        ended = desk.client.post(f"/api/v1/sessions/{session_id}/end")
        assert ended.status_code == 200, ended.text
        wait_for(lambda: not leftovers(), 15, "the temporary file removed by the end")
    assert not user_path(USER, "mid.bin").exists()
    failed = wait_for(
        lambda: transfers(broker, session_id, "files.transfer.failed", "mid.bin"),
        20,
        "the cut upload on the record",
    )
    assert failed[0]["ok"] is False


# 3. an upload keeps the mode of the file it replaces


@pytest.mark.parametrize("mode", [0o600, 0o700, 0o644])
def test_an_upload_keeps_the_mode_of_the_file_it_replaces(
    session: tuple[Desk, str], mode: int
) -> None:
    desk, session_id = session
    target = user_path(USER, f"kept-{mode:o}")
    as_user(f"import os; os.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY, {mode}))")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    put = desk.client.put(files_url(session_id), params={"path": target.name}, content=b"new")
    assert put.status_code == 201, put.text
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_a_new_file_is_the_users_alone(session: tuple[Desk, str]) -> None:
    desk, session_id = session
    put = desk.client.put(files_url(session_id), params={"path": "fresh.txt"}, content=b"x")
    assert put.status_code == 201, put.text
    assert stat.S_IMODE(user_path(USER, "fresh.txt").stat().st_mode) == 0o600


def test_the_agents_sftp_server_keeps_the_users_own_umask(
    pc: tuple[Broker, UserAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PC's sftp-server gets the umask the agent started with (it was ``-u 022``
    for everyone, wider than a user's 077): never wider than the user's own tools."""
    monkeypatch.setattr(runtime, "_umask_found", [0o077])
    argv = files_command(pwd.getpwnam(USER).pw_uid)
    assert argv[argv.index("-u") + 1] == "077"


# 6. a declared size over the limit: 413 at once


def test_a_declared_size_over_the_limit_is_refused_at_once(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    with put_started(broker, desk, session_id, "huge.bin", 5 * 1024**3, b"only a little") as tls:
        tls.settimeout(10)  # not after 5 GiB: at once
        answer = read_answer(tls)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '"too_large"' in answer
    assert transfers(broker, session_id, "files.transfer.started", "huge.bin") == []
    assert not user_path(USER, "huge.bin").exists() and leftovers() == []


# 4. paths that would hide what they name; 5. long names


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/" + "./" * 1500 + "home/ahfaults/.bashrc", '"." component'),
        ("./.bashrc", '"." component'),
        ("/home//ahfaults/.bashrc", "empty component"),
        ("//etc/passwd", "empty component"),
        ("report\u202etxt.exe", "format character"),
        ("\u200b.bashrc", "format character"),
        ("日" * 86, "longer than 255 bytes"),
    ],
)
def test_paths_that_hide_what_they_name_are_refused(
    session: tuple[Desk, str], path: str, needle: str
) -> None:
    desk, session_id = session
    for method in ("GET", "PUT"):
        answer = desk.client.request(
            method, files_url(session_id), params={"path": path},
            content=b"x" if method == "PUT" else None,
        )  # fmt: skip
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "bad_path" and needle in answer.json()["message"]


@pytest.mark.parametrize("folder", [".", "/", "/etc/", "/etc"])
def test_plain_folder_paths_still_list(session: tuple[Desk, str], folder: str) -> None:
    desk, session_id = session
    listing = desk.client.get(listing_url(session_id), params={"path": folder})
    assert listing.status_code == 200, listing.text


@pytest.mark.parametrize(
    "name",
    ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt", "\U0001f468\u200d\U0001f4bb.txt"],
)
def test_names_spelt_with_joiners_upload(session: tuple[Desk, str], name: str) -> None:
    """The zero-width (non-)joiner spells Persian words and emoji sequences: kept."""
    desk, session_id = session
    put = desk.client.put(files_url(session_id), params={"path": name}, content=b"j")
    assert put.status_code == 201, put.text
    assert user_path(USER, name).read_bytes() == b"j"


def test_a_long_name_in_utf8_uploads(session: tuple[Desk, str]) -> None:
    desk, session_id = session
    name = "日" * 80  # 240 bytes: fits a name, not with the temporary name's padding
    put = desk.client.put(files_url(session_id), params={"path": name}, content=b"long")
    assert put.status_code == 201, put.text
    assert user_path(USER, name).read_bytes() == b"long"
    assert leftovers() == []


def test_the_pc_user_sees_the_end_of_a_long_path() -> None:
    padded = "/" + "a/" * 1000 + "home/u/.ssh/id_ed25519"
    shown = transfer_text(FileTransfer("S1", padded, "download", 5, "started"))
    assert shown.startswith("…") and "/.ssh/id_ed25519 from this PC" in shown
    assert len(shown.split(" from this PC")[0]) == 300
    assert transfer_text(FileTransfer("S1", "a/b.txt", "upload", 1, "done")).startswith("a/b.txt")


def test_a_temporary_name_stays_within_255_bytes() -> None:
    name = "a" + "é" * 120  # 241 bytes; a cut at 200 bytes would split an "é"
    folder, temp = upload_names(f"docs/{name}", "0123456789ab")
    assert folder == "docs" and temp.startswith("docs/.aé")
    assert len(posixpath.basename(temp).encode()) <= 255
    assert posixpath.basename(temp).encode().decode() == posixpath.basename(temp)
