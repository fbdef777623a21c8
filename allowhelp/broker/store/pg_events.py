"""Console events between broker nodes: PostgreSQL's LISTEN/NOTIFY (#21).

Each node sends the events its own console hub publishes on one channel
(``pg_notify``) and listens on it for the other nodes', which it hands to its
hub as if they were its own, so a technician on any node sees every node's
news (a session asked for, an agent online). An event names the node it comes
from, so a node skips its own. Best effort, like the hub itself: an event over
PostgreSQL's payload limit or sent while the database is away is logged and
dropped (the console reloads what it shows from the API anyway). Sending and
listening run on threads of their own, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from allowhelp.broker.errors import StoreError
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.store.postgres_db import connect, first_line

log = logging.getLogger(__name__)

CHANNEL = "allowhelp_events"
PAYLOAD_MAX = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more
RETRY = 2.0  # seconds between attempts to listen again after the database went away

# (event, audience) from another node
Deliver = Callable[[Mapping[str, object], str | None], None]


class NodeEvents:
    """One node's end of the channel: ``send`` its events, ``deliver`` the others'."""

    def __init__(self, url: PostgresUrl, node_id: str, deliver: Deliver) -> None:
        self._url = url
        self._node_id = node_id
        self._deliver = deliver
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-send")
        self._send_conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="events-listen", daemon=True)
        self.ready = threading.Event()  # set once LISTEN is in place (tests await it)

    def start(self) -> None:
        self._listener.start()

    def send(self, event: Mapping[str, object], audience: str | None) -> None:
        """Never blocks: queued for the sender thread."""
        body = {"node": self._node_id, "audience": audience, "event": event}
        try:
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            log.warning("a console event is not JSON; not sent to other nodes")
            return
        if len(payload.encode()) > PAYLOAD_MAX:
            log.warning("a console event of %d bytes is too large for other nodes", len(payload))
            return
        if not self._stop.is_set():
            self._sender.submit(self._notify, payload)

    def _notify(self, payload: str) -> None:
        try:
            conn = self._send_conn
            if conn is None or conn.closed or conn.broken:
                self._send_conn = conn = connect(self._url)
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except (psycopg.Error, StoreError) as exc:
            text = first_line(exc) if isinstance(exc, psycopg.Error) else str(exc)
            log.warning("console event not sent to other nodes: %s", text)
            if self._send_conn is not None:
                self._send_conn.close()
                self._send_conn = None

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self._url) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    while not self._stop.is_set():  # wakes each second to see close()
                        for notice in conn.notifies(timeout=1.0):
                            self._hand_over(notice.payload)
            except (psycopg.Error, StoreError) as exc:
                self.ready.clear()
                log.warning("listening for other nodes' events failed: %s", exc)
                self._stop.wait(RETRY)

    def _hand_over(self, payload: str) -> None:
        try:
            body = json.loads(payload)
            node, audience, event = body["node"], body["audience"], body["event"]
        except (ValueError, KeyError, TypeError):
            log.warning("a malformed event on %s ignored", CHANNEL)
            return
        if node == self._node_id or not isinstance(event, dict):
            return
        self._deliver(event, audience if isinstance(audience, str) else None)

    def close(self) -> None:
        self._stop.set()
        if self._listener.is_alive():
            self._listener.join(timeout=5)
        self._sender.shutdown(wait=True)
        if self._send_conn is not None:
            self._send_conn.close()
