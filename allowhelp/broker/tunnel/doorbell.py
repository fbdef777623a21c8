"""The broker's doorbell book: keys, rings, beats (docs/design.md "Doorbell").

An idle agent holds no SSH tunnel, only a doorbell: one HTTPS request
(``POST /api/v1/agent/doorbell``) whose answer is a stream of JSON lines that
never ends on its own. The broker rings it (``{"type": "ring", ...}``) when an
action needs the PC; the agent then starts its full process, which dials the
SSH tunnel as always. Beats (``{"type": "beat"}``) at once and every
``BEAT_EVERY`` seconds tell the agent the stream still stands.

This module holds no I/O: a ``Bell`` is one standing stream's state (rings
still to send, ended or not) and its lines; the registry (``agents.py``) keeps
the bells, the console's route (``console/api/doorbell.py``) serves them. A
bell costs one small object, and one future while its stream waits: no task of
its own.

The key a doorbell presents is made here, sent to the agent once over its
tunnel (``doorbell.key``), and kept by the broker only as its sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import AsyncIterator

BEAT_EVERY = 20.0  # seconds between two beats (the agent redials after 60 s of silence)
MAX_BODY = 16 * 1024  # the request body: {"hello": {...}}
BODY_DEADLINE = 10.0  # seconds to send that body
RING_REASONS = ("consent.request", "job.run", "wake")
SCHEME = "Doorbell"

BEAT = json.dumps({"type": "beat"}).encode() + b"\n"
_AGENT_ID = re.compile(r"a-[a-z2-7]{20}")  # certs/sshkeys.py agent_id_for
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_token() -> str:
    """A fresh doorbell key: 32 random bytes, 43 characters of urlsafe base64."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` is the key whose hash is stored; constant time in the token."""
    offered = token_hash(token)
    return hmac.compare_digest(offered, stored_hash) and bool(stored_hash)


def credentials(header: str | None) -> tuple[str, str] | None:
    """``Doorbell <agent_id>:<token>`` → (agent id, token); None when malformed."""
    if header is None:
        return None
    scheme, _, rest = header.strip().partition(" ")
    agent_id, sep, token = rest.strip().partition(":")
    if scheme.lower() != SCHEME.lower() or not sep:
        return None
    if not _AGENT_ID.fullmatch(agent_id) or not _TOKEN.fullmatch(token):
        return None
    return agent_id, token


def ring_line(reason: str) -> bytes:
    return json.dumps({"type": "ring", "reason": reason}).encode() + b"\n"


class Bell:
    """One standing doorbell stream of one agent: the rings it still has to send."""

    __slots__ = ("_rings", "_waiter", "agent_id", "ended", "peer")

    def __init__(self, agent_id: str, peer: str) -> None:
        self.agent_id = agent_id
        self.peer = peer
        self.ended = False
        self._rings: list[str] = []
        # The stream's wait for a ring or the end: one future while it waits (an
        # asyncio.Event would carry a deque of its own for each bell).
        self._waiter: asyncio.Future[None] | None = None

    def ring(self, reason: str) -> None:
        """Ask the agent to wake; a reason already waiting to be sent is not repeated."""
        if reason not in RING_REASONS:
            raise ValueError(f"a ring's reason is one of {', '.join(RING_REASONS)}")
        if not self.ended and reason not in self._rings:
            self._rings.append(reason)
            self._wake()

    def end(self) -> None:
        """End the stream (agent removed, a newer doorbell, shutdown)."""
        self.ended = True
        self._wake()

    async def lines(self, beat_every: float = BEAT_EVERY) -> AsyncIterator[bytes]:
        """The stream's body: a beat at once, rings as they come, a beat after each
        ``beat_every`` seconds without one; it ends when the bell does."""
        yield BEAT
        while not self.ended:
            if not self._rings and not await self._rung(beat_every):
                yield BEAT
                continue
            while self._rings and not self.ended:
                yield ring_line(self._rings.pop(0))

    async def _rung(self, seconds: float) -> bool:
        """Wait for a ring or the end, ``seconds`` at most; False when none came."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await self._waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        return True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
