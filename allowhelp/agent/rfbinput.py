"""View-only, enforced on the PC: the technician's RFB bytes without any input.

Every screen engine gets the viewer's bytes through this filter when the grant
is view-only, whatever the engine's own flag (x11vnc ``-viewonly``, wayvnc
``--disable-input``) and whatever the broker already dropped: none of the
three is trusted alone. It follows the client's side of RFB (RFC 6143): the
version, the security type (only None: the tunnel and the consent gate are the
security), ClientInit, then each message at its boundary however the channel
splits the stream. What only looks passes (pixel format, encodings, update
requests, continuous updates, fences); keys, pointer, clipboard, desktop
resizing, xvp (reboot) and QEMU key events are dropped. A message type it does
not know, or a length past its bounds, is an ``RfbInputError``: the session
ends rather than guess where the next message starts.

Sans-I/O: ``feed(bytes) -> bytes``; the agent's broker-side twin is
``broker/relay/rfb.py`` (the agent cannot import the broker).
"""

from __future__ import annotations

import struct
from enum import Enum, auto

from allowhelp.agent.errors import AgentError

VERSIONS_WITH_CHOICE = (b"RFB 003.007\n", b"RFB 003.008\n")
VERSION_WITHOUT_CHOICE = b"RFB 003.003\n"
SECURITY_NONE = 1
MAX_FENCE_PAYLOAD = 64
MAX_CUT_TEXT = 16 * 1024 * 1024

PASS_FIXED = {0: 20, 3: 10, 150: 10}  # SetPixelFormat, FramebufferUpdateRequest, ContinuousUpdates
DROP_FIXED = {4: 8, 5: 6, 250: 4}  # KeyEvent, PointerEvent, xvp
SET_ENCODINGS, CUT_TEXT, FENCE, SET_DESKTOP_SIZE, QEMU = 2, 6, 248, 251, 255


class RfbInputError(AgentError):
    """The viewer's stream is not RFB this filter can follow; the session ends."""


class _State(Enum):
    VERSION = auto()
    SECURITY = auto()
    CLIENT_INIT = auto()
    MESSAGES = auto()


class ViewOnlyFilter:
    """Viewer → screen server bytes in, what may reach the server out."""

    def __init__(self) -> None:
        self._state = _State.VERSION
        self._buf = bytearray()
        self._skip = 0
        self.dropped = 0  # input messages dropped so far

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while self._buf:
            if self._skip:
                taken = min(self._skip, len(self._buf))
                del self._buf[:taken]
                self._skip -= taken
                continue
            step = self._handshake() if self._state is not _State.MESSAGES else self._message()
            if step is None:
                break
            size, keep = step
            if keep:
                out += self._buf[:size]
                del self._buf[:size]
            else:
                self.dropped += 1
                self._skip = size
        return bytes(out)

    def _handshake(self) -> tuple[int, bool] | None:
        if self._state is _State.VERSION:
            if len(self._buf) < 12:
                return None
            version = bytes(self._buf[:12])
            if version in VERSIONS_WITH_CHOICE:
                self._state = _State.SECURITY
            elif version == VERSION_WITHOUT_CHOICE:
                self._state = _State.CLIENT_INIT
            else:
                raise RfbInputError("the viewer did not send an RFB 3.3, 3.7 or 3.8 version")
            return 12, True
        if self._state is _State.SECURITY:
            if self._buf[0] != SECURITY_NONE:
                raise RfbInputError("the viewer chose a security type other than None")
            self._state = _State.CLIENT_INIT
            return 1, True
        self._state = _State.MESSAGES  # ClientInit: one byte, shared or not
        return 1, True

    def _message(self) -> tuple[int, bool] | None:
        kind = self._buf[0]
        if kind in PASS_FIXED:
            return self._whole(PASS_FIXED[kind], keep=True)
        if kind in DROP_FIXED:
            return DROP_FIXED[kind], False
        size = self._variable_size(kind)
        if size is None:
            return None
        keep = kind in (SET_ENCODINGS, FENCE)
        return self._whole(size, keep=True) if keep else (size, False)

    def _whole(self, size: int, *, keep: bool) -> tuple[int, bool] | None:
        return (size, keep) if len(self._buf) >= size else None

    def _variable_size(self, kind: int) -> int | None:
        """The full length of a variable-length message, once its header is here."""
        header = {SET_ENCODINGS: 4, CUT_TEXT: 8, FENCE: 9, SET_DESKTOP_SIZE: 8, QEMU: 2}
        if kind not in header:
            raise RfbInputError(f"the viewer sent an RFB message of unknown type {kind}")
        if len(self._buf) < header[kind]:
            return None
        if kind == SET_ENCODINGS:
            return 4 + 4 * int(struct.unpack_from(">H", self._buf, 2)[0])
        if kind == CUT_TEXT:
            length = abs(int(struct.unpack_from(">i", self._buf, 4)[0]))
            if length > MAX_CUT_TEXT:
                raise RfbInputError("the viewer sent a clipboard message past the bound")
            return 8 + length
        if kind == FENCE:
            payload = self._buf[8]
            if payload > MAX_FENCE_PAYLOAD:
                raise RfbInputError("the viewer sent a fence past the bound")
            return 9 + payload
        if kind == SET_DESKTOP_SIZE:
            return 8 + 16 * self._buf[6]
        if self._buf[1] != 0:  # QEMU: only the extended key event (subtype 0) is known
            raise RfbInputError("the viewer sent a QEMU message this agent does not know")
        return 12
