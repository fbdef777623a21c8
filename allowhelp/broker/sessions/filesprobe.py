"""A files session whose PC stopped answering: its later requests refused at once.

OpenSSH's sftp-server serves one call at a time, in order. Once a call of the
session had no answer within ``--files-timeout`` (``sftpwire.bounded`` gave up on
it: a stuck network mount), every later call of the session waits behind it, and
each later request would wait its whole limit for its 504. So that first timeout
sends one probe (``realpath .``), which the PC can answer only after the call it
is stuck on. Until the probe's answer, a new request of the session waits at most
``PROBE_WAIT`` seconds for it, then ends with 504 ``pc_not_answering`` ("the PC
has not answered an earlier request yet"), nothing of it asked of the PC's
sftp-server. The probe's answer (or the session's end, which ends the channel) lets requests
through again, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import asyncssh

from allowhelp.broker.errors import AgentTimeout

PROBE_WAIT = 1.0  # seconds a request waits for the probe's answer (at most the call limit)


class NotYetAnswered(AgentTimeout):
    """A request not sent: an earlier call of its session still has no answer."""


class Liveness:
    """Whether a files session's PC has answered since a call of it was given up on."""

    def __init__(self) -> None:
        self._probe: asyncio.Future[Any] | None = None

    @property
    def stuck(self) -> bool:
        """A call was given up on, and the PC has not answered since."""
        return self._probe is not None and not self._probe.done()

    def noticed(self, error: BaseException | None, client: asyncssh.SFTPClient) -> None:
        """What a request of the session ended with: a call given up on (``AgentTimeout``)
        sends the probe, if none is waiting for its answer yet."""
        if not isinstance(error, AgentTimeout) or isinstance(error, NotYetAnswered):
            return
        if not self.stuck:
            self._probe = asyncio.ensure_future(client.realpath(b"."))
            self._probe.add_done_callback(_seen)

    @contextmanager
    def watching(self, client: asyncssh.SFTPClient) -> Iterator[None]:
        """A request's calls to the PC: one given up on is noticed."""
        try:
            yield
        except AgentTimeout as exc:
            self.noticed(exc, client)
            raise

    async def watched(
        self, stream: AsyncIterator[bytes], client: asyncssh.SFTPClient
    ) -> AsyncIterator[bytes]:
        """``stream`` (a listing's answer), a call given up on mid-way noticed."""
        try:
            with self.watching(client):
                async for chunk in stream:
                    yield chunk
        finally:
            if isinstance(stream, AsyncGenerator):  # closed with its wrapper
                await stream.aclose()

    async def answering(self, path: str, limit: float) -> None:
        """Return when the PC answers (at once when no call is waiting), else
        ``NotYetAnswered`` (504 ``pc_not_answering``) after ``PROBE_WAIT`` seconds."""
        probe = self._probe
        if probe is None or probe.done():
            return
        await asyncio.wait({probe}, timeout=min(PROBE_WAIT, limit))  # never cancels it
        if not probe.done():
            raise NotYetAnswered(
                f"{path}: not asked: the PC has not answered an earlier request yet"
                f" (the PC's file system did not answer in {limit:g} s)"
            )


def _seen(probe: asyncio.Future[Any]) -> None:
    """The probe's answer, whatever it is (an error, the channel's end): the PC is
    past the stuck call. Its exception is taken so that asyncio does not log it."""
    if not probe.cancelled():
        probe.exception()
