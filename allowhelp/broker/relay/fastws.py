"""The console's WebSocket protocol with a shortcut for the terminal's keystrokes and echoes.

uvicorn's websockets-sansio protocol hands every message to the application
through an ``asyncio.Queue`` read by the application's task, and takes every
message to send from that task (``await send``). For one keystroke that is a
task wake-up in each direction on the broker, with the ASGI layers
(starlette's wrappers, uvicorn's ``receive``/``send``) around each one: about
a tenth of the broker's CPU per round trip (docs/benchmarks.md §7h).

:class:`ShortcutWebSocketProtocol` is uvicorn's protocol with two synchronous
doors, used by the terminal relay (``terminal.py``) while nothing is waiting:

* ``take_bytes``: a hook the relay sets; a binary message that arrives while the
  application's queue is empty goes to the hook in the protocol's own callback
  (the relay writes it to the shell's channel there). The hook may decline
  (returns False): the message is queued as before, in order.
* :meth:`send_bytes_now`: a binary frame written to the transport at once, when
  ``await send`` would not wait either (handshake done, no close sent, not
  disconnected, the transport not paused). Returns False otherwise: the caller
  sends through ASGI as before.

The relay finds the protocol in the scope's ``extensions`` under
:data:`EXTENSION`; served by anything else, it does without.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

EXTENSION = "allowhelp.shortcut"


class ShortcutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the relay's two shortcuts."""

    take_bytes: Callable[[bytes], bool] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only once the handshake is being answered
        if scope is not None and self.response.status_code == 101:
            scope["extensions"][EXTENSION] = self

    def handle_bytes(self, event: Frame) -> None:
        take = self.take_bytes
        if (
            take is not None
            and event.fin
            and not self.close_sent
            and self.queue.empty()  # nothing before it waits for the application
            and take(bytes(event.data))
        ):
            return
        super().handle_bytes(event)

    def can_send_now(self) -> bool:
        """``await send`` of a binary message would send it at once, without waiting."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        )

    def send_bytes_now(self, data: bytes) -> bool:
        """Send ``data`` as one binary frame now, if ``await send`` would not wait."""
        if not self.can_send_now():
            return False
        self.conn.send_binary(data)
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True


class Channel(Protocol):
    def write(self, data: bytes) -> None: ...


def write_now(chan: Channel | None, writable: bool, data: bytes) -> bool:
    """A keystroke written to the shell's channel in the WebSocket protocol's
    callback (both terminal relays' ``take_bytes``); False when the relay's task
    must take it: no channel yet, its window closed, or closing (the task writes
    it again and ends on the error)."""
    if chan is None or not writable:
        return False
    try:
        chan.write(data)
    except Exception:
        return False
    return True
