"""A reconnecting invitee on a shared PC: each start of a session's program has its
number (``Open.program``), so a new one starts while the one before still ends, and
each report (``Opened``, ``Exited``) and ``Close`` reaches its own program.

Before the numbers, programs were known by session id alone: the helper refused the
new start ("already started") while the last one was being reaped, and the service
took the last one's ``Exited`` for the new one, ending the invitee's new channel.

The helper's side runs real shells on real PTYs; the service's side is its lookup of
whose report it is (plain logic, with stand-ins for the programs).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from allowhelp.agent.helper import ConsentHelperView, SessionHelper
from allowhelp.agent.machine import HelperHub
from allowhelp.agent.remote import RemoteProgram
from allowhelp.agent.seqpacket import PacketConn
from allowhelp.protocol import helper as hp

SESSION = "s-00000001"


class Conn:
    """What the helper sends to its service: the packets, the descriptors closed."""

    uid = os.getuid()

    def __init__(self) -> None:
        self.sent: list[hp.Packet] = []

    def send(self, data: bytes, fds: Sequence[int] = ()) -> bool:
        for fd in fds:
            os.close(fd)
        self.sent.append(hp.decode(data))
        return True

    def of(self, number: int) -> list[hp.Packet]:
        return [p for p in self.sent if getattr(p, "program", None) == number]


def shell(number: int) -> hp.Open:
    return hp.Open(SESSION, "shell", "xterm-256color", 80, 24, False, program=number)


async def reports(conn: Conn, number: int, kind: type[hp.Packet]) -> hp.Packet:
    for _ in range(500):
        found = [p for p in conn.of(number) if isinstance(p, kind)]
        if found:
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind.__name__} for program {number}: {conn.sent}")


async def test_a_new_start_of_a_session_runs_while_the_last_one_ends() -> None:
    helper = SessionHelper(Path("/nonexistent/agent.sock"), [], ConsentHelperView())
    conn = Conn()
    packet_conn = cast(PacketConn, conn)
    try:
        helper._handle(packet_conn, shell(1))
        first = await reports(conn, 1, hp.Opened)
        assert isinstance(first, hp.Opened) and first.ok
        helper._handle(packet_conn, hp.Close(SESSION, 1))  # ending: its reaper takes a moment
        helper._handle(packet_conn, shell(2))  # the invitee is back at once
        second = await reports(conn, 2, hp.Opened)
        assert isinstance(second, hp.Opened) and second.ok, second
        helper._handle(packet_conn, shell(2))  # the same start twice is still refused
        refused = [p for p in conn.of(2) if isinstance(p, hp.Opened) and not p.ok]
        assert [p.error for p in refused] == ["already started"]
        await reports(conn, 1, hp.Exited)
        assert (SESSION, 2) in helper.programs and (SESSION, 1) not in helper.programs
        assert not [p for p in conn.of(2) if isinstance(p, hp.Exited)]  # the new one runs on
        helper._handle(packet_conn, hp.Close(SESSION, 2))
        await reports(conn, 2, hp.Exited)
        assert helper.programs == {}
    finally:
        await helper.wait_programs()


class Program:
    """A stand-in for ``RemoteProgram``: whose it is, and what it was told."""

    def __init__(self, conn: object) -> None:
        self.conn = conn
        self.told: list[str] = []

    def exited(self, status: int, error: str) -> None:
        self.told.append(f"exited {status}")


def hub_with(programs: dict[tuple[str, int], Program]) -> HelperHub:
    hub = HelperHub(Path("/nonexistent/agent.sock"), active_uid=None)
    hub.programs.running = cast(dict[tuple[str, int], RemoteProgram], programs)
    return hub


def test_the_service_gives_each_report_to_its_own_program() -> None:
    conn = cast(PacketConn, Conn())
    old, new = Program(conn), Program(conn)
    hub = hub_with({(SESSION, 1): old, (SESSION, 2): new})
    hub.programs.news(conn, hp.Exited(SESSION, 0, program=1), [])
    assert old.told == ["exited 0"] and new.told == []
    hub.programs.news(conn, hp.Exited(SESSION, 0, program=7), [])  # ended here already
    assert new.told == []
    hub.programs.news(cast(PacketConn, Conn()), hp.Exited(SESSION, 0, program=2), [])
    assert new.told == []  # another helper's word on it counts for nothing
    hub.programs.news(conn, hp.Exited(SESSION, 0), [])  # a helper older than the numbers
    assert new.told == ["exited 0"]  # its session's newest program, as before
