"""The screen recording file (``ID.rfb``): a small framed binary format (docs/recordings.md).

::

    file   = MAGIC header frame*
    MAGIC  = b"AHRFB001"                      8 bytes: format and version 1
    header = u32 length, that many bytes of UTF-8 JSON (an object: session,
             hostname, technician, started, rfb, view_only)
    frame  = u8 kind, u32 milliseconds since the start, u32 length, payload
    kind   = b"S"  bytes from the PC, as relayed to the technician (the RFB
                   handshake as the broker tidied it, ServerInit, then updates)
             b"C"  bytes from a technician, as forwarded to the PC; the payload
                   starts with u8 n and n bytes of UTF-8: who sent them
             b"M"  a marker, UTF-8 text: why the recording stopped early

All integers are big-endian. The pixel format and encodings the stream uses
are in it: the server's ServerInit in the first ``S`` frames, the viewer's
SetPixelFormat and SetEncodings in the first ``C`` frames. A player feeds the
``S`` payloads, in order and at their times, to an RFB decoder.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

MAGIC = b"AHRFB001"
FORMAT = "allowhelp-rfb-1"
MEDIA_TYPE = "application/x-allowhelp-rfb"
SUFFIX = ".rfb"
SERVER, CLIENT, MARKER = b"S"[0], b"C"[0], b"M"[0]
KINDS = frozenset({SERVER, CLIENT, MARKER})
FRAME = struct.Struct(">BII")
HEAD = struct.Struct(">I")
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 16 << 20  # far above a relay frame (256 KiB)
MAX_SENDER = 255


class BadRecording(ValueError):
    """Bytes that are not a screen recording of this format."""


def file_header(meta: dict[str, object]) -> bytes:
    body = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
    if len(body) > MAX_HEADER:
        raise ValueError("the recording header is too long")
    return MAGIC + HEAD.pack(len(body)) + body


def frame_head(kind: int, millis: int, length: int) -> bytes:
    return FRAME.pack(kind, millis & 0xFFFFFFFF, length)


def sender_prefix(sender: str) -> bytes:
    """The start of a ``C`` payload: who sent the bytes (cut to 255 bytes of UTF-8)."""
    name = sender.encode()[:MAX_SENDER].decode("utf-8", "ignore").encode()
    return bytes([len(name)]) + name


@dataclass(frozen=True)
class Frame:
    kind: int
    millis: int
    payload: bytes

    @property
    def sender(self) -> str:
        """Who sent a ``C`` frame's bytes."""
        return self.payload[1 : 1 + self.payload[0]].decode("utf-8", "replace")

    @property
    def rfb(self) -> bytes:
        """A ``C`` frame's RFB bytes, an ``S`` frame's payload."""
        return self.payload[1 + self.payload[0] :] if self.kind == CLIENT else self.payload


def read_header(handle: IO[bytes]) -> tuple[dict[str, object], int]:
    """The header's JSON and where the first frame starts."""
    if handle.read(len(MAGIC)) != MAGIC:
        raise BadRecording("not an allowhelp screen recording (bad magic)")
    raw = handle.read(HEAD.size)
    if len(raw) < HEAD.size:
        raise BadRecording("the recording's header is cut short")
    (length,) = HEAD.unpack(raw)
    if length > MAX_HEADER:
        raise BadRecording(f"a {length}-byte recording header")
    body = handle.read(length)
    if len(body) < length:
        raise BadRecording("the recording's header is cut short")
    try:
        meta = json.loads(body)
    except ValueError as exc:
        raise BadRecording(f"the recording's header is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BadRecording("the recording's header is not a JSON object")
    return meta, len(MAGIC) + HEAD.size + length


def frames(handle: IO[bytes], start: int) -> Iterator[tuple[int, Frame]]:
    """Each whole frame from ``start`` with the offset just after it; stops at a
    torn last frame, raises :class:`BadRecording` on one that cannot be."""
    handle.seek(start)
    at = start
    while True:
        head = handle.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        kind, millis, length = FRAME.unpack(head)
        if kind not in KINDS or length > MAX_PAYLOAD:
            raise BadRecording(f"a bad frame at byte {at}")
        payload = handle.read(length)
        if len(payload) < length:
            return
        at += FRAME.size + length
        yield at, Frame(kind, millis, payload)
