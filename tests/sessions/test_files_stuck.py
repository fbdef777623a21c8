"""A PC stuck on a files call: the session's next requests are refused at once.

sftp-server serves one call at a time, in order: once a call of a files session had
no answer within ``--files-timeout``, every later call waits behind it. The broker
(``filesprobe.py``) then sends one probe; until the PC answers it, a new request of
the session ends with 504 ``pc_not_answering`` ("the PC has not answered an earlier
request yet"), on the record first, without waiting its whole limit; once the PC
answers, requests work again.

The real pieces of ``test_files_timeouts.py`` (a broker with ``--files-timeout 2``,
the user's agent run as a local user, OpenSSH's sftp-server stopped with SIGSTOP
the way a stuck network mount stops it), and the probe itself in plain asyncio.
Nothing here is timed: the refusals are told apart by what they say, and the PC is
seen to be still stopped when they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import asyncssh
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

from allowhelp.broker.errors import AgentTimeout, NotFound
from allowhelp.broker.sessions import filesprobe
from allowhelp.broker.sessions.filesprobe import Liveness, NotYetAnswered
from harness import Broker, Desk, wait_for

USER = "ahstuck"
LIMIT = 2  # --files-timeout, seconds
MIB = 1024 * 1024
EARLIER = "the PC has not answered an earlier request yet"

needs_machine = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


# the real pieces


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, UserAgent]]:
    args = ("--files-timeout", str(LIMIT))
    with user_agent_online(tmp_path_factory.mktemp("stuck"), USER, args) as made:
        yield made


@pytest.fixture
def session(pc: tuple[Broker, UserAgent]) -> Iterator[tuple[Desk, str]]:
    with files_session(pc, "a stuck PC") as made:
        yield made


def stopped(pids: list[int]) -> bool:
    """Each of ``pids`` still stopped: it has answered nothing since."""
    states = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] for pid in pids]
    return states == ["T"] * len(pids)


def refused_for_the_earlier_call(answer: httpx.Response, path: str) -> None:
    assert answer.status_code == 504, answer.text
    body = answer.json()
    assert body["error"] == "pc_not_answering"
    assert body["message"].startswith(f"{path}: not asked: {EARLIER}"), body["message"]
    assert f"did not answer in {LIMIT} s" in body["message"]


def lists(desk: Desk, session_id: str) -> bool:
    return desk.client.get(listing_url(session_id), params={"path": "."}).status_code == 200


def works_again(desk: Desk, session_id: str) -> None:
    """Once the PC answers: the same session lists, uploads and downloads as before."""
    wait_for(lambda: lists(desk, session_id), 20, "a listing once the PC answers")
    put = desk.client.put(files_url(session_id), params={"path": "again.txt"}, content=b"ok")
    assert put.status_code == 201, put.text
    got = desk.client.get(files_url(session_id), params={"path": "again.txt"})
    assert got.status_code == 200 and got.content == b"ok"


@needs_machine
def test_requests_after_a_call_the_pc_did_not_answer_are_refused_without_it(
    pc: tuple[Broker, UserAgent], session: tuple[Desk, str]
) -> None:
    broker, _ = pc
    desk, session_id = session
    as_user(USER, f"open({str(user_path(USER, 'stuck.txt'))!r}, 'w').write('stuck')")
    with pc_not_answering(USER) as pids:
        first = desk.client.get(listing_url(session_id), params={"path": "."}, timeout=60)
        assert first.status_code == 504, first.text  # the call it is stuck on: its whole limit
        assert EARLIER not in first.json()["message"]

        got = desk.client.get(files_url(session_id), params={"path": "stuck.txt"}, timeout=60)
        refused_for_the_earlier_call(got, "stuck.txt")
        failed = transfers(broker, session_id, "files.transfer.failed", "stuck.txt")  # no wait:
        assert failed and failed[0]["ok"] is False and EARLIER in failed[0]["error"]  # before
        assert transfers(broker, session_id, "files.transfer.started", "stuck.txt")  # the answer

        put = desk.client.put(
            files_url(session_id), params={"path": "new.txt"}, content=b"new", timeout=60
        )
        refused_for_the_earlier_call(put, "new.txt")
        failed = transfers(broker, session_id, "files.transfer.failed", "new.txt")
        assert failed and EARLIER in failed[0]["error"]

        listed = desk.client.get(listing_url(session_id), params={"path": "sub"}, timeout=60)
        refused_for_the_earlier_call(listed, "sub")
        assert transfers(broker, session_id, "files.listed", "sub")
        assert stopped(pids)  # all of it without an answer from the PC
    works_again(desk, session_id)
    assert not user_path(USER, "new.txt").exists()  # the refused upload wrote nothing


@needs_machine
def test_a_download_cut_by_a_stuck_pc_has_the_next_request_refused_without_it(
    session: tuple[Desk, str],
) -> None:
    desk, session_id = session
    big = str(user_path(USER, "big.bin"))
    as_user(USER, f"import os; open({big!r}, 'wb').close(); os.truncate({big!r}, {256 * MIB})")
    with desk.client.stream(
        "GET", files_url(session_id), params={"path": "big.bin"}, timeout=60
    ) as answer:
        assert answer.status_code == 200
        chunks = answer.iter_raw()
        next(chunks)
        with pc_not_answering(USER) as pids:
            with pytest.raises(httpx.HTTPError):  # cut by the chunk the PC does not answer
                for _ in chunks:
                    pass
            listed = desk.client.get(listing_url(session_id), params={"path": "."}, timeout=60)
            refused_for_the_earlier_call(listed, ".")
            assert stopped(pids)
    works_again(desk, session_id)


# the probe, in plain asyncio: a call is a future the test answers when it likes


class Client:
    """What the probe uses of asyncssh's SFTP client: ``realpath``, answered by the test."""

    def __init__(self) -> None:
        self.asked: list[asyncio.Future[bytes]] = []

    def realpath(self, path: bytes) -> asyncio.Future[bytes]:
        assert path == b"."
        self.asked.append(asyncio.get_running_loop().create_future())
        return self.asked[-1]


def sftp(client: Client) -> asyncssh.SFTPClient:
    return cast(asyncssh.SFTPClient, client)


def given_up() -> AgentTimeout:
    return AgentTimeout(f"x: the PC's file system did not answer in {LIMIT} s")


async def test_a_call_given_up_on_sends_one_probe_and_refuses_until_it_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filesprobe, "PROBE_WAIT", 0.01)
    client, liveness = Client(), Liveness()
    await liveness.answering("a", LIMIT)  # nothing given up on: at once
    liveness.noticed(given_up(), sftp(client))
    liveness.noticed(given_up(), sftp(client))  # one probe at a time
    assert len(client.asked) == 1 and liveness.stuck
    with pytest.raises(NotYetAnswered) as refused:
        await liveness.answering("b", LIMIT)
    assert isinstance(refused.value, AgentTimeout) and refused.value.code == "pc_not_answering"
    assert refused.value.message.startswith(f"b: not asked: {EARLIER}")
    liveness.noticed(refused.value, sftp(client))  # a refusal is no call given up on
    assert len(client.asked) == 1
    client.asked[0].set_result(b"/home/u")
    await asyncio.sleep(0)
    assert not liveness.stuck
    await liveness.answering("c", LIMIT)


async def test_a_probe_answered_while_a_request_waits_lets_it_through() -> None:
    client, liveness = Client(), Liveness()
    liveness.noticed(given_up(), sftp(client))
    waiting = asyncio.ensure_future(liveness.answering("a", LIMIT))
    await asyncio.sleep(0)
    assert not waiting.done()
    client.asked[0].set_result(b"/home/u")
    await asyncio.wait_for(waiting, 10)  # no NotYetAnswered


async def test_a_probe_that_fails_counts_as_an_answer() -> None:
    client, liveness = Client(), Liveness()
    liveness.noticed(given_up(), sftp(client))
    client.asked[0].set_exception(asyncssh.SFTPConnectionLost("Connection closed"))
    await asyncio.sleep(0)
    assert not liveness.stuck  # the channel's end: the next request meets that instead
    await liveness.answering("a", LIMIT)


async def test_only_a_call_given_up_on_sends_the_probe() -> None:
    client, liveness = Client(), Liveness()
    liveness.noticed(None, sftp(client))
    liveness.noticed(NotFound("a: no such file or folder on the PC"), sftp(client))
    with pytest.raises(NotFound), liveness.watching(sftp(client)):
        raise NotFound("b: no such file")
    assert not client.asked and not liveness.stuck
    with pytest.raises(AgentTimeout), liveness.watching(sftp(client)):
        raise given_up()
    assert len(client.asked) == 1


async def test_a_listing_cut_mid_way_by_the_pc_sends_the_probe() -> None:
    client, liveness = Client(), Liveness()

    async def listing() -> AsyncIterator[bytes]:
        yield b"[{}"
        raise given_up()

    got = []
    with pytest.raises(AgentTimeout):
        async for chunk in liveness.watched(listing(), sftp(client)):
            got.append(chunk)
    assert got == [b"[{}"] and len(client.asked) == 1 and liveness.stuck
