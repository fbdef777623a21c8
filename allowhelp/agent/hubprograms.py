"""The programs the machine service's hub (``machine.py``) had started in users'
sessions: a shell, a screen server, sftp-server, each run by the user's session
helper (``remote.py``'s ``RemoteProgram``).

Each is known by its session and its number (``Open.program``: 1..65535, then
from 1 again), so that a reconnect's new program and the last one, still ending,
are told apart. A helper's report (``opened``, ``exited``) counts only for a
program that helper was asked to start; a helper that goes away ends its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from allowhelp.agent.seqpacket import PacketConn, close_fds
from allowhelp.protocol import helper as hp
from allowhelp.protocol.kinds import Kind

if TYPE_CHECKING:  # loaded with the first session (tests/house/test_idle_imports.py)
    from allowhelp.agent.channels import GatedChannel
    from allowhelp.agent.consent import Grant
    from allowhelp.agent.remote import RemoteProgram

log = logging.getLogger(__name__)

PROGRAM_NUMBERS = 65535  # ``Open.program`` counts 1..this, then again from 1


class HubPrograms:
    def __init__(self) -> None:
        # by session id and number (``Open.program``: a reconnect's while the last one ends)
        self.running: dict[tuple[str, int], RemoteProgram] = {}
        self._last = 0

    def start(
        self,
        conn: PacketConn,
        channel: GatedChannel,
        grant: Grant,
        kind: Kind,
        *,
        term: str,
        size: tuple[int, int],
    ) -> RemoteProgram:
        """A program ``conn``'s helper is asked to start for ``grant``'s channel."""
        from allowhelp.agent.remote import RemoteProgram  # noqa: PLC0415 - with the first session

        self._last = self._last % PROGRAM_NUMBERS + 1
        number = self._last
        program = RemoteProgram(
            conn, channel, grant, kind, term=term, size=size, forget=self._forget, number=number
        )
        self.running[grant.session_id, number] = program
        return program

    def _forget(self, program: RemoteProgram) -> None:
        if self.running.get((program.session_id, program.number)) is program:
            del self.running[program.session_id, program.number]

    def helper_lost(self, conn: PacketConn) -> None:
        """``conn``'s helper went away: its programs' channels end now."""
        for program in [p for p in self.running.values() if p.conn is conn]:
            program.helper_lost()

    def news(self, conn: PacketConn, packet: hp.Opened | hp.Exited, fds: list[int]) -> None:
        """A helper says its program opened (with its descriptor) or ended."""
        program = self.running.get((packet.session_id, packet.program))
        if program is None and packet.program == 0:  # a helper older than program numbers
            program = self._newest(packet.session_id)
        if program is None or program.conn is not conn:  # ended here already, or not its own
            close_fds(fds)
            if program is not None:
                log.warning("uid %d reported on a program that is not its own", conn.uid)
            return
        if isinstance(packet, hp.Opened):
            program.opened(packet, fds)
        else:
            program.exited(packet.status, packet.error)

    def _newest(self, session_id: str) -> RemoteProgram | None:
        found = [p for (sid, _), p in self.running.items() if sid == session_id]
        return found[-1] if found else None
