"""A real desktop for the screen tests: a local user's session (GNOME, KDE or sway),
the machine service as root with that user's session helper in it, the real broker,
and a technician at its console.

Shared by ``tests/agent/test_*_screen.py``; each keeps only its own tests. A test
module takes its marks and fixtures with three lines::

    pytestmark = desktop_marks(CAN_RUN_GNOME, WHY_NO_GNOME)
    world = world_fixture(USER, gnome_desktop, "gnome")
    desk = desk_fixture()

and finds here what its tests share: the portal engine's processes, the desktop's
own screen-sharing dialog answered while the engine waits, the audit of a session.
"""

from __future__ import annotations

import asyncio
import json
import pwd
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest
import websockets
from machinekit import CAN_RUN, WHY_NOT, Machine, local_users, machine_service, passable_folder

from harness import TECH, TECH_PW, Broker, Desk, broker_cli, staffed_broker
from screenkit import RfbClient, processes, screen_socket


class SessionDesktop(Protocol):
    """A desktop running as a local user: what their session helper needs of it."""

    def session_env(self) -> tuple[str, ...]: ...


class DialogDesktop(Protocol):
    """A desktop whose portal asks the user again in a dialog of its own."""

    def answer(self, how: str) -> subprocess.CompletedProcess[str]: ...


D = TypeVar("D", bound=SessionDesktop)


def desktop_marks(can_run: bool, why_not: str) -> list[pytest.MarkDecorator]:
    """The module's ``pytestmark``: skipped unless the machine service can run here
    (root, ``useradd``, the system Python) and so can the desktop (``can_run``)."""
    return [
        pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT),
        pytest.mark.skipif(not can_run, reason=why_not),
    ]


@dataclass
class World(Generic[D]):
    machine: Machine
    broker: Broker
    desktop: D
    user: str

    def agent_row(self) -> dict[str, Any]:
        return self.machine.agent_row(self.broker)

    def consented(self, desk: Desk, *, view_only: bool, reason: str, **extra: Any) -> str:
        """A screen session ``desk`` asks for, allowed by the user at the PC: its id."""
        return self.machine.allowed_screen(
            desk, self.user, view_only=view_only, reason=reason, **extra
        )

    def audit_of(self, session_id: str) -> list[dict[str, Any]]:
        done = broker_cli("audit", "export", "--data", str(self.broker.data))
        records = [json.loads(line) for line in done.stdout.splitlines()]
        return [r for r in records if r["target"] == session_id]


def world_fixture(
    user: str, desktop: Callable[[str], AbstractContextManager[D]], folder: str
) -> Any:
    """The module's ``world``: ``desktop(user)`` running as ``user`` (made here), the
    machine service with their helper in that session, a staffed broker; all ended
    and removed after the module."""

    @pytest.fixture(scope="module", name="world")
    def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World[D]]:
        with (
            local_users(user),
            passable_folder() as root,
            desktop(user) as session,
            staffed_broker(tmp_path_factory.mktemp(folder)) as fleet,
            machine_service(fleet.brokers[0], root, user, session.session_env()) as machine,
        ):
            yield World(machine, fleet.brokers[0], session, user)

    return world


def desk_fixture() -> Any:
    """The module's ``desk``: the technician logged in to the world's broker, per test."""

    @pytest.fixture(name="desk")
    def desk(world: World[Any]) -> Iterator[Desk]:
        desk = Desk.login(world.broker, TECH, TECH_PW)
        yield desk
        desk.close()

    return desk


def portal_engine_pids(user: str) -> list[int]:
    """The portal engine and its GStreamer, of ``user`` (other tests on the machine,
    e.g. another desktop's, may run GStreamer of their own)."""
    found = processes("allowhelp.agent.portalvnc", "python3")
    found += processes("pipewiresrc", "gst-launch-1.0")
    uid = pwd.getpwnam(user).pw_uid
    return [pid for pid in found if owner_of(pid) == uid]


def owner_of(pid: int) -> int:
    """The real uid of ``pid``; -1 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    return int(status.split("Uid:")[1].split()[0])


async def through_dialog(
    client: RfbClient,
    desktop: DialogDesktop,
    how: str,
    *,
    again: float = 3,
    not_yet: float = 3,
    patience: float = 30,
) -> bytes:
    """Answer ``how`` in the desktop's dialog until the engine speaks; what it said first.

    The dialog appears a moment after the engine asks the portal; the engine says its
    RFB version only once the desktop has answered, so that is the fact awaited. After
    a press that found the dialog the next waits ``again`` (the desktop may take a while
    to answer under load), after one that did not ``not_yet``."""
    answered = threading.Event()

    def press() -> None:
        while not answered.is_set():
            found = desktop.answer(how).returncode == 0
            answered.wait(again if found else not_yet)

    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    try:
        first = await client.read(12, timeout=90)
    finally:
        answered.set()
        presser.join(patience)
    client.buf[:0] = first  # the handshake reads it again
    return first


async def closed_after_dialog(
    desk: Desk, session_id: str, desktop: DialogDesktop, how: str, **timing: float
) -> websockets.ConnectionClosed:
    """How the screen's WebSocket closed once ``how`` was answered in the dialog."""
    async with screen_socket(desk, session_id) as ws:
        client = RfbClient(ws)
        with pytest.raises(websockets.ConnectionClosed) as caught:
            await through_dialog(client, desktop, how, **timing)
            while True:
                await asyncio.wait_for(ws.recv(), 90)
        return caught.value
