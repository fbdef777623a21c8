"""Frames the console's keystroke door (``relay/fastws.py``, ``data_received``) must
leave to websockets' parser: an unmasked frame, reserved bits, a binary frame in
the middle of a fragmented message are refused with 1002 as websockets refuses
them; a ping and a keystroke in one read, a keystroke with a 16-bit length, are
read by the parser and echoed. A keystroke alone in its read is read by the door.

Real parts as ``test_shortcut.py`` (``tests/kit/shortcutkit.py``); the raw frames
are written to the client's own transport, past its framing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from shortcutkit import Counting, echoed, stack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError


def frame(first: int, payload: bytes, *, masked: bool = True, wide: bool = False) -> bytes:
    """A raw frame from the browser: ``first`` is FIN, RSV and the opcode."""
    size = len(payload)
    length = bytes((126,)) + size.to_bytes(2, "big") if wide else bytes((size,))
    if not masked:
        return bytes((first,)) + length + payload
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((first, length[0] | 0x80)) + length[1:] + mask + body


async def opened(ws: ClientConnection) -> Counting:
    """The door is in use: a keystroke went the short way and came back."""
    await ws.send(b"a")
    assert await echoed(ws, 1) == b"a"
    (proto,) = Counting.made
    assert isinstance(proto, Counting)
    return proto


@pytest.mark.parametrize(
    "raw",
    [
        frame(0x82, b"k", masked=False),  # a client's frame must be masked
        frame(0xC2, b"k"),  # RSV1 without a negotiated extension
    ],
    ids=["unmasked", "rsv1"],
)
async def test_a_frame_websockets_refuses_is_refused(tmp_path: Path, raw: bytes) -> None:
    async with stack(tmp_path) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        proto = await opened(ws)
        taken = proto.taken
        ws.transport.write(raw)
        with pytest.raises(ConnectionClosedError) as closed:
            await echoed(ws, 1)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
        assert proto.taken == taken  # nothing of it reached the shell


async def test_a_keystroke_inside_a_fragmented_message_is_refused(tmp_path: Path) -> None:
    """A text message begun and not finished: a binary frame alone in its read
    next is a protocol error (websockets expects a continuation), not a keystroke."""
    async with stack(tmp_path) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        proto = await opened(ws)
        taken = proto.taken
        ws.transport.write(frame(0x01, b'{"type":'))  # text, not final
        for _ in range(100):  # read on its own, before what follows
            if proto.conn.current_size is not None:
                break
            await asyncio.sleep(0.01)
        assert proto.conn.current_size is not None
        ws.transport.write(frame(0x82, b"k"))
        with pytest.raises(ConnectionClosedError) as closed:
            await echoed(ws, 1)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
        assert proto.taken == taken


async def test_frames_the_door_leaves_to_the_parser_are_still_keystrokes(tmp_path: Path) -> None:
    """A ping and a keystroke in one read, a keystroke with a 16-bit length: not
    the door's (one small frame alone), the parser's; echoed all the same."""
    async with stack(tmp_path) as made, connect(f"ws://127.0.0.1:{made.port}/t") as ws:
        proto = await opened(ws)
        parsed = proto.parsed
        ws.transport.write(frame(0x89, b"p") + frame(0x82, b"b"))
        assert await echoed(ws, 1) == b"b"
        ws.transport.write(frame(0x82, b"c", wide=True))
        assert await echoed(ws, 1) == b"c"
        assert proto.parsed == parsed + 2
        await ws.send(b"d")  # and alone again: the door's
        assert await echoed(ws, 1) == b"d"
        assert proto.parsed == parsed + 2
