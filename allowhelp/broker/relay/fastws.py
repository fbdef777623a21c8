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
from typing import Any

import asyncssh
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from allowhelp.certs.ssh_fastlane import write_data

EXTENSION = "allowhelp.shortcut"
FIN_BINARY = 0x82  # FIN, no RSV bits, opcode 2
MASK = 0x80
MASKED_HEADER = 6  # two bytes, then the 4-byte mask (a length under 126)
SMALL_FRAME = MASKED_HEADER + 125
_AT_EOF = StreamReader.at_eof.__code__  # where websockets' parser waits between frames


def binary_header(size: int) -> bytes:
    """An unmasked, final binary frame's header for ``size`` bytes (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((FIN_BINARY, size))
    if size < 1 << 16:
        return bytes((FIN_BINARY, 126)) + size.to_bytes(2, "big")
    return bytes((FIN_BINARY, 127)) + size.to_bytes(8, "big")


class ShortcutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the relay's two shortcuts."""

    take_bytes: Callable[[bytes], bool] | None = None
    _declined = False  # the frame being parsed was offered already (``data_received``)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only once the handshake is being answered
        if scope is not None and self.response.status_code == 101:
            scope["extensions"][EXTENSION] = self

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a keystroke goes to the relay at once: ``data`` is one whole
        small binary frame, unfragmented and masked, read at a frame boundary with
        nothing queued before it (one method, no helpers: it runs at every keystroke,
        where each Python call costs far more than in a loop, docs/benchmarks.md §7j)."""
        size = len(data)
        if (
            self.take_bytes is None
            or not MASKED_HEADER <= size <= SMALL_FRAME
            or data[0] != FIN_BINARY
            or size != MASKED_HEADER + (data[1] ^ MASK)  # the mask bit clear or a length > 125: no
        ):
            super().data_received(data)
            return
        conn = self.conn
        inner: Any = conn.parser  # waiting for a frame's first byte, not inside one?
        while inner.gi_yieldfrom is not None:
            inner = inner.gi_yieldfrom
        if (
            inner.gi_code is not _AT_EOF
            or conn.state is not State.OPEN
            or conn.current_size is not None  # inside a fragmented message
            or conn.parser_exc is not None
            or conn.extensions
            or conn.reader.buffer
            or self.close_sent
            or not self.queue.empty()
            or (conn.max_message_size is not None and size - MASKED_HEADER > conn.max_message_size)
        ):
            super().data_received(data)  # the parser reads it, as always
        elif not self.offer(apply_mask(data[MASKED_HEADER:], data[2:MASKED_HEADER])):
            self._declined = True  # the parser reads it; the relay is not asked twice
            try:
                super().data_received(data)
            finally:
                self._declined = False

    def handle_bytes(self, event: Frame) -> None:
        if (
            self.take_bytes is not None
            and not self._declined
            and event.fin
            and not self.close_sent
            and self.queue.empty()  # nothing before it waits for the application
            and self.offer(bytes(event.data))
        ):
            return
        super().handle_bytes(event)

    def offer(self, data: bytes) -> bool:
        """A whole binary message to the relay's hook; True: it took it."""
        take = self.take_bytes
        return take is not None and take(data)

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
        self.frame_now(data)
        return True

    def frame_now(self, data: bytes) -> None:
        """Send ``data`` as one binary frame; the caller has seen ``can_send_now``
        true with nothing run in between that touches this connection."""
        conn = self.conn
        if conn.extensions or conn.writes or conn.expect_continuation_frame:
            conn.send_binary(data)  # websockets frames it (compressed, or after what waits)
            self.transport.write(b"".join(conn.data_to_send()))
        else:  # a server's frame is not masked: the header and the bytes
            self.transport.write(binary_header(len(data)) + data)


def write_now(chan: asyncssh.SSHClientChannel[bytes] | None, writable: bool, data: bytes) -> bool:
    """A keystroke written to the shell's channel in the WebSocket protocol's
    callback (both terminal relays' ``take_bytes``); False when the relay's task
    must take it: no channel yet, its window closed, or closing (the task writes
    it again and ends on the error)."""
    if chan is None or not writable:
        return False
    try:
        write_data(chan, data)
    except Exception:
        return False
    return True
