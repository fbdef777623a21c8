"""A PC whose file system stops answering: each files request ends within its limit.

The same real pieces as ``test_files.py`` (a broker, the user's agent run as a
local user, OpenSSH's sftp-server). The broker runs with ``--files-timeout 2``. The
PC "stops answering" the way a stuck network mount makes it: its sftp-server
stopped (SIGSTOP), so a call waits for an answer that does not come. (A FIFO would
block sftp-server's open too, but the broker's stat refuses one as "not a regular
file" before it is opened.) Every request then ends with 504 ``pc_not_answering``
within the limit, a transfer is on the record as failed with that reason, and the
session works again once the PC answers (SIGCONT).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from machinekit import CAN_RUN, WHY_NOT
from stuckpckit import (
    as_user,
    files_session,
    files_url,
    listing_url,
    pc_not_answering,
    transfers,
)
from userkit import UserAgent, user_agent_online, user_path

from allowhelp.broker.settings import BrokerSettings
from harness import Broker, Desk, wait_for

USER = "ahslow"
LIMIT = 2  # --files-timeout, seconds
MARGIN = 4  # for the machine (2 cores shared), not for the PC
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    args = ("--files-timeout", str(LIMIT))
    with user_agent_online(tmp_path_factory.mktemp("slow"), USER, args) as made:
        yield made


@pytest.fixture
def session(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    with files_session(pc, "a slow PC") as made:
        yield made


def leftovers() -> list[str]:
    return [p.name for p in user_path(USER).iterdir() if ".allowhelp-" in p.name]


def not_answering(answer: httpx.Response | str) -> None:
    """The answer is 504 pc_not_answering, saying how long the PC had."""
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 504, answer.text
        body = answer.json()
    else:
        assert answer.startswith("HTTP/1.1 504"), answer[:300]
        body = json.loads(answer[answer.index("\r\n\r\n") + 4 :])
    assert body["error"] == "pc_not_answering"
    assert f"the PC's file system did not answer in {LIMIT} s" in body["message"]


def still_works(desk: Desk, session_id: str) -> None:
    """Once the PC answers again, the same session lists, uploads and downloads (the
    first listing may come before the PC's answer to the probe sent after the call it
    was stuck on: ``filesprobe.py``; it is asked again until it is listed)."""

    def listing() -> httpx.Response | None:
        answer = desk.client.get(listing_url(session_id), params={"path": "."})
        return None if answer.status_code == 504 else answer

    listed: httpx.Response = wait_for(listing, 20, "the session to list again")
    assert listed.status_code == 200, listed.text
    put = desk.client.put(files_url(session_id), params={"path": "after.txt"}, content=b"ok")
    assert put.status_code == 201, put.text
    got = desk.client.get(files_url(session_id), params={"path": "after.txt"})
    assert got.status_code == 200 and got.content == b"ok"


# 1. a listing, and a download, whose first call the PC does not answer


def test_a_listing_the_pc_does_not_answer_ends_with_504(session: tuple[Desk, str]) -> None:
    desk, session_id = session
    with pc_not_answering(USER):
        started = time.monotonic()
        answer = desk.client.get(listing_url(session_id), params={"path": "."}, timeout=60)
        took = time.monotonic() - started
    not_answering(answer)
    assert LIMIT <= took < LIMIT + MARGIN
    still_works(desk, session_id)


def test_a_download_the_pc_does_not_answer_ends_with_504_on_the_record(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    as_user(USER, f"open({str(user_path(USER, 'slow.txt'))!r}, 'w').write('slow')")
    with pc_not_answering(USER):
        started = time.monotonic()
        answer = desk.client.get(files_url(session_id), params={"path": "slow.txt"}, timeout=60)
        took = time.monotonic() - started
    not_answering(answer)
    assert took < LIMIT + MARGIN
    failed = wait_for(
        lambda: transfers(broker, session_id, "files.transfer.failed", "slow.txt"),
        20,
        "the download's failure on the record",
    )
    assert failed[0]["ok"] is False and f"did not answer in {LIMIT} s" in failed[0]["error"]
    still_works(desk, session_id)


# 2. a download the PC stops answering mid-stream: cut short, on the record


def test_a_download_the_pc_stops_answering_mid_way_is_cut_and_recorded(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    big = str(user_path(USER, "big.bin"))
    size = 256 * MIB
    as_user(USER, f"import os; open({big!r}, 'wb').close(); os.truncate({big!r}, {size})")
    got = 0
    started = time.monotonic()
    with (
        pytest.raises(httpx.HTTPError),
        desk.client.stream(
            "GET", files_url(session_id), params={"path": "big.bin"}, timeout=60
        ) as answer,
    ):
        assert answer.status_code == 200
        chunks = answer.iter_raw()
        got += len(next(chunks))
        with pc_not_answering(USER):
            started = time.monotonic()
            for chunk in chunks:
                got += len(chunk)
    assert time.monotonic() - started < LIMIT + MARGIN
    assert got < size
    failed = wait_for(
        lambda: transfers(broker, session_id, "files.transfer.failed", "big.bin"),
        20,
        "the cut download on the record",
    )
    assert failed[0]["ok"] is False and f"did not answer in {LIMIT} s" in failed[0]["error"]
    assert failed[0]["size"] < size
    still_works(desk, session_id)


# 3. an upload the PC stops answering mid-stream: 504, and no temporary file left


def raw_tls(broker: Broker) -> tuple[socket.socket, ssl.SSLSocket]:
    url = urlsplit(broker.url)
    raw = socket.create_connection((url.hostname or "", url.port or 443))
    return raw, broker.ssl_context().wrap_socket(raw, server_hostname=url.hostname)


def read_answer(tls: ssl.SSLSocket) -> str:
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def test_an_upload_the_pc_stops_answering_ends_with_504_and_leaves_nothing(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    raw, tls = raw_tls(broker)
    with raw, tls:
        head = (
            f"PUT {files_url(session_id)}?path=up.bin HTTP/1.1\r\n"
            f"Host: {urlsplit(broker.url).netloc}\r\nCookie: {desk.cookie_header()}\r\n"
            f"X-CSRF-Token: {desk.csrf}\r\nContent-Length: {8 * MIB}\r\n\r\n"
        ).encode()
        tls.sendall(head + secrets.token_bytes(MIB))
        wait_for(leftovers, 20, "the upload's temporary file")
        with pc_not_answering(USER):
            started = time.monotonic()
            tls.sendall(secrets.token_bytes(MIB))
            tls.settimeout(LIMIT + MARGIN)
            answer = read_answer(tls)
            took = time.monotonic() - started
    not_answering(answer)
    assert took < LIMIT + MARGIN
    wait_for(lambda: not leftovers(), 20, "the temporary file removed once the PC answers")
    assert not user_path(USER, "up.bin").exists()
    failed = wait_for(
        lambda: transfers(broker, session_id, "files.transfer.failed", "up.bin"),
        20,
        "the cut upload on the record",
    )
    assert f"did not answer in {LIMIT} s" in failed[0]["error"]
    still_works(desk, session_id)


# 4. an upload whose last step, the rename, the PC does not answer in time


@contextmanager
def renames_held(seconds: float) -> Iterator[None]:
    """The user's sftp-server held at each rename for ``seconds`` (a stuck mount under
    the folder): strace delays the system call, so it lands late, after the limit."""
    found = subprocess.run(
        ["pgrep", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
    )
    pids = [pid.decode() for pid in found.stdout.split()]
    assert pids, "no sftp-server of the user's running"
    calls = "rename,renameat,renameat2"
    command = ["strace", "-qq", "-o", "/dev/null", "-e", f"trace={calls}"]
    command += ["-e", f"inject={calls}:delay_enter={int(seconds * 1_000_000)}"]
    for pid in pids:
        command += ["-p", pid]
    tracer = subprocess.Popen(command, stderr=subprocess.DEVNULL)

    def traced() -> bool:
        status = Path(f"/proc/{pids[0]}/status").read_text()
        return any(line.split() == ["TracerPid:", str(tracer.pid)] for line in status.splitlines())

    try:
        wait_for(traced, 10, "strace attached to sftp-server")
        yield
    finally:
        tracer.terminate()  # detaches: the held call goes on
        tracer.wait(10)


def test_an_upload_whose_rename_the_pc_does_not_answer_keeps_its_digest(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    target = user_path(USER, "renamed.txt")
    as_user(USER, f"open({str(target)!r}, 'w').write('the old text')")
    new = secrets.token_bytes(1000)
    with renames_held(LIMIT + MARGIN):
        started = time.monotonic()
        answer = desk.client.put(
            files_url(session_id), params={"path": "renamed.txt"}, content=new, timeout=60
        )
        took = time.monotonic() - started
        not_answering(answer)
        assert took < LIMIT + MARGIN
        failed = wait_for(
            lambda: transfers(broker, session_id, "files.transfer.failed", "renamed.txt"),
            20,
            "the upload's end on the record",
        )
        # sftp-server serves in order: the rename lands after all, with these bytes
        wait_for(lambda: target.read_bytes() == new, 20, "the held rename to land")
    record = failed[0]
    assert record["ok"] is False and f"did not answer in {LIMIT} s" in record["error"]
    assert record["sha256"] == hashlib.sha256(new).hexdigest()
    assert record["size"] == len(new)
    assert record["outcome"].startswith("unknown: the PC may still rename it")
    assert not leftovers()
    still_works(desk, session_id)


def test_the_files_timeout_is_checked(tmp_path: Path) -> None:
    assert BrokerSettings.build(tmp_path).files_timeout == 30.0
    assert BrokerSettings.build(tmp_path, files_timeout=45).files_timeout == 45.0
    for wrong in (0.5, 46):
        with pytest.raises(ValueError, match="files-timeout"):
            BrokerSettings.build(tmp_path, files_timeout=wrong)
