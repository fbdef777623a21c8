"""Live updates for the console: one hub, many WebSocket subscribers.

Publishing never blocks the broker: each subscriber has a bounded queue, and
one that falls too far behind is dropped (its page reconnects and reloads)
rather than slowing down the tunnel or the session that published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
Event = Mapping[str, object]


@dataclass(eq=False)
class Subscriber:
    username: str
    is_admin: bool
    web_session: str = ""  # the hash of the cookie that opened it: logout closes it
    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )
    dropped: bool = False

    def wants(self, audience: str | None) -> bool:
        if audience is None or self.is_admin:
            return True
        return audience == f"user:{self.username}"


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        # With --store: each event also goes to the other nodes (store/pg_events.py).
        self._relay: Callable[[Event, str | None], None] | None = None

    def relay_to(self, send: Callable[[Event, str | None], None] | None) -> None:
        self._relay = send

    def publish_from_node(self, event: Event, audience: str | None) -> None:
        """Another node's event, for this node's consoles (not sent back out)."""
        self._deliver(event, audience)

    def subscribe(self, username: str, is_admin: bool, web_session: str = "") -> Subscriber:
        subscriber = Subscriber(username, is_admin, web_session)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, event: Event, *, audience: str | None = None) -> None:
        """Send to everyone (``None``), to admins only (``"admins"``), or to
        ``"user:NAME"`` plus the admins: on this node, and on the others."""
        self._deliver(event, audience)
        if self._relay is not None:
            self._relay(event, audience)

    def _deliver(self, event: Event, audience: str | None) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.wants(audience):
                continue
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        log.warning("events: dropping a console that fell behind (user=%s)", subscriber.username)
        self._subscribers.discard(subscriber)
        subscriber.dropped = True
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)  # tells the reader to close the socket

    def count(self) -> int:
        return len(self._subscribers)

    def heard(self) -> bool:
        """Whether a published event reaches anyone: a console here, or other nodes."""
        return bool(self._subscribers) or self._relay is not None

    def close_web_session(self, web_session: str) -> int:
        """Logout: the sockets that cookie opened are closed (the reader sees None)."""
        return self._close([s for s in self._subscribers if s.web_session == web_session])

    def close_user(self, username: str) -> int:
        """A disabled user or a changed role: every socket of theirs is closed."""
        return self._close([s for s in self._subscribers if s.username == username])

    def _close(self, subscribers: list[Subscriber]) -> int:
        for subscriber in subscribers:
            self._subscribers.discard(subscriber)
            while not subscriber.queue.empty():
                subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(None)
        return len(subscribers)
