"""RFB (RFC 6143) as the broker's screen relay sees it: one sans-I/O checker per direction.

The relay passes the screen stream through, but not blindly:

- ``ClientFilter`` (technician → PC) follows the client's side of the
  handshake and then every message boundary, however the WebSocket frames
  split them. On a view-only grant it drops input (keys, pointer, clipboard,
  QEMU key events, xvp, desktop resizing), so the view-only promise does not
  rest on x11vnc alone. Encodings the broker could not follow are removed from
  SetEncodings, so the PC never enables a message format we cannot parse (the
  extended pointer event, GII). A message type it does not know is an error:
  the relay closes rather than guess a length.
- ``ServerChecker`` (PC → technician) checks the server's handshake: RFB 3.8,
  a security list narrowed to None (the SSH tunnel and the consent gate are the
  security; x11vnc runs with ``-nopw``), a sane screen size, a short desktop
  name made plain text. After ServerInit the bytes pass as they are: parsing
  every encoding would cost the relay its speed, and the browser's noVNC is the
  one that decodes rectangles (it fails cleanly on a hostile one).

Both raise ``RfbError`` with a message fit for the technician and the audit.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum, auto

from allowhelp.broker.errors import BrokerError
from allowhelp.protocol.text import plain_text

VERSION = b"RFB 003.008\n"
VERSION_SIZE = 12
SECURITY_NONE = 1
MAX_DIMENSION = 16384
MAX_NAME = 4096  # what the PC may send; we keep the first NAME_SHOWN characters
NAME_SHOWN = 200
MAX_REASON = 4096
MAX_CUT_TEXT = 256 * 1024
MAX_ENCODINGS = 512
MAX_FENCE_PAYLOAD = 64
MAX_SCREENS = 16

# client → server message types
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255
QEMU_EXTENDED_KEY = 0

FIXED_SIZE = {
    SET_PIXEL_FORMAT: 20,
    FRAMEBUFFER_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    XVP: 4,
}
# What a view-only grant forbids: everything that acts on the PC.
INPUT = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, XVP, SET_DESKTOP_SIZE, QEMU})

# Encodings whose client messages have a length this module knows (noVNC 1.7).
ENCODINGS = frozenset(
    {
        0,  # Raw
        1,  # CopyRect
        2,  # RRE
        5,  # Hextile
        6,  # Zlib
        7,  # Tight
        16,  # ZRLE
        21,  # JPEG
        50,  # H.264
        -260,  # TightPNG
        -223,  # DesktopSize
        -224,  # LastRect
        -239,  # Cursor
        -258,  # QEMU extended key event
        -261,  # QEMU LED state
        -307,  # DesktopName
        -308,  # ExtendedDesktopSize
        -309,  # xvp
        -312,  # Fence
        -313,  # ContinuousUpdates
        0x574D5664,  # VMware cursor
        *range(-32, -22),  # quality levels
        *range(-256, -246),  # compression levels
    }
)
EXTENDED_CLIPBOARD = -(2**32 - 0xC0A1E5CE)  # 0xC0A1E5CE read as a signed 32-bit number
VIEW_ONLY_DROPPED_ENCODINGS = frozenset({-258, -309})
_VERSION = re.compile(rb"RFB \d{3}\.\d{3}\n")


class RfbError(BrokerError):
    """The stream broke the protocol or our bounds; the relay closes on it."""

    code = "rfb_error"


class RfbTooLarge(RfbError):
    """A client message longer than the relay accepts."""


def check_version(line: bytes, who: str) -> None:
    if not _VERSION.fullmatch(line):
        raise RfbError(f"{who} did not start with an RFB protocol version")
    if line != VERSION:
        shown = line.decode("ascii", "replace").strip()
        raise RfbError(f"{who} speaks {shown}; allowhelp needs RFB 003.008")


class _Client(Enum):
    VERSION = auto()
    SECURITY = auto()
    CLIENT_INIT = auto()
    MESSAGES = auto()


class ClientFilter:
    """Technician → PC bytes in, what may reach the PC out."""

    def __init__(self, *, view_only: bool, keep_inputs: bool = False) -> None:
        self.view_only = view_only
        self.dropped = 0
        self._state = _Client.VERSION
        self._buf = bytearray()
        # The input messages let through, kept for ``take_inputs`` (an invitee's
        # relay records their input alone, not their viewer's handshake or requests).
        self._keep_inputs = keep_inputs
        self._inputs: list[bytes] = []

    def take_inputs(self) -> bytes:
        """The input messages (keys, pointer, clipboard, ...) let through since the last call."""
        taken, self._inputs = b"".join(self._inputs), []
        return taken

    @property
    def ready(self) -> bool:
        """The client's side of the handshake is done (ClientInit went through)."""
        return self._state is _Client.MESSAGES

    def feed(self, data: bytes) -> bytes:
        """Whole messages out, the rest kept; ``data`` itself when nothing changed.

        A 256 KiB clipboard message passes with no copy: the console streams
        them during a paste, and every copy here is broker CPU per MB.
        """
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        pieces: list[bytes | memoryview] = []
        changed = False
        at = 0
        while at < len(data):
            size = self._next_size(view[at:])
            if size is None or len(data) - at < size:
                break
            message = view[at : at + size]
            out = self._handle(message)
            changed = changed or out is not message
            pieces.append(out)
            at += size
        self._buf += view[at:]
        if changed:
            return b"".join(pieces)
        return data if at == len(data) else data[:at]

    def _next_size(self, buf: memoryview) -> int | None:
        if self._state is _Client.VERSION:
            return VERSION_SIZE
        if self._state in (_Client.SECURITY, _Client.CLIENT_INIT):
            return 1
        return message_size(buf)

    def _handle(self, message: memoryview) -> bytes | memoryview:
        """The message as it may go on: the same object when it passes unchanged."""
        state = self._state
        if state is _Client.VERSION:
            check_version(bytes(message), "the console")
            self._state = _Client.SECURITY
        elif state is _Client.SECURITY:
            if message[0] != SECURITY_NONE:
                raise RfbError(f"the console chose security type {message[0]}, not None")
            self._state = _Client.CLIENT_INIT
        elif state is _Client.CLIENT_INIT:
            self._state = _Client.MESSAGES
        else:
            return self._message(message)
        return message

    def _message(self, message: memoryview) -> bytes | memoryview:
        kind = message[0]
        if self.view_only and kind in INPUT:
            self.dropped += 1
            return b""
        if kind == SET_ENCODINGS:
            return self._encodings(message)
        if self._keep_inputs and kind in INPUT:
            self._inputs.append(bytes(message))
        return message

    def _encodings(self, message: memoryview) -> bytes:
        count = struct.unpack_from(">H", message, 2)[0]
        wanted = struct.unpack_from(f">{count}i", message, 4)
        allowed = ENCODINGS | ({EXTENDED_CLIPBOARD} if not self.view_only else set())
        if self.view_only:
            allowed = allowed - VIEW_ONLY_DROPPED_ENCODINGS
        kept = [e for e in wanted if e in allowed]
        return struct.pack(f">BxH{len(kept)}i", SET_ENCODINGS, len(kept), *kept)


@dataclass(frozen=True)
class _Counted:
    """A message whose size is a fixed head plus ``count`` entries of ``each`` bytes."""

    head: int
    count_format: str
    count_at: int
    each: int
    limit: int
    name: str

    def size(self, buf: bytearray | bytes | memoryview) -> int | None:
        if len(buf) < self.head:
            return None
        count = int(struct.unpack_from(self.count_format, buf, self.count_at)[0])
        if count > self.limit:
            raise RfbError(f"{self.name} with {count} entries (at most {self.limit})")
        return self.head + count * self.each


COUNTED = {
    SET_ENCODINGS: _Counted(4, ">H", 2, 4, MAX_ENCODINGS, "SetEncodings"),
    CLIENT_FENCE: _Counted(9, ">B", 8, 1, MAX_FENCE_PAYLOAD, "ClientFence"),
    SET_DESKTOP_SIZE: _Counted(8, ">B", 6, 16, MAX_SCREENS, "SetDesktopSize"),
}


def message_size(buf: bytearray | bytes | memoryview) -> int | None:
    """The size of the client message starting ``buf``; None until enough is known."""
    kind = buf[0]
    if kind in FIXED_SIZE:
        return FIXED_SIZE[kind]
    if kind in COUNTED:
        return COUNTED[kind].size(buf)
    if kind == CLIENT_CUT_TEXT:
        return _cut_text_size(buf)
    if kind == QEMU:
        if len(buf) < 2:
            return None
        if buf[1] != QEMU_EXTENDED_KEY:
            raise RfbError(f"unknown QEMU client message {buf[1]}")
        return 12
    raise RfbError(f"unknown client message type {kind}")


def _cut_text_size(buf: bytearray | bytes | memoryview) -> int | None:
    if len(buf) < 8:
        return None
    length = abs(int(struct.unpack_from(">i", buf, 4)[0]))  # negative: extended clipboard
    if length > MAX_CUT_TEXT:
        raise RfbTooLarge(f"clipboard text over {MAX_CUT_TEXT // 1024} KiB")
    return 8 + length


class _Server(Enum):
    VERSION = auto()
    SECURITY = auto()
    SECURITY_RESULT = auto()
    SERVER_INIT = auto()
    PASS = auto()


class ServerChecker:
    """PC → technician bytes in, checked (and the handshake tidied) bytes out."""

    def __init__(self) -> None:
        self._state = _Server.VERSION
        self._buf = bytearray()
        self.width = 0
        self.height = 0
        self.name = ""

    @property
    def ready(self) -> bool:
        """ServerInit went through: from here on, bytes pass as they are."""
        return self._state is _Server.PASS

    def feed(self, data: bytes) -> bytes:
        if self._state is _Server.PASS:
            return data
        self._buf += data
        out = bytearray()
        while not self.ready:
            step = self._step()
            if step is None:
                return bytes(out)
            out += step
        out += self._buf
        self._buf.clear()
        return bytes(out)

    def _step(self) -> bytes | None:
        if self._state is _Server.VERSION:
            return self._version()
        if self._state is _Server.SECURITY:
            return self._security()
        if self._state is _Server.SECURITY_RESULT:
            return self._result()
        return self._server_init()

    def _take(self, size: int) -> bytes | None:
        if len(self._buf) < size:
            return None
        taken = bytes(self._buf[:size])
        del self._buf[:size]
        return taken

    def _version(self) -> bytes | None:
        line = self._take(VERSION_SIZE)
        if line is not None:
            check_version(line, "the PC's screen")
            self._state = _Server.SECURITY
        return line

    def _security(self) -> bytes | None:
        if not self._buf or len(self._buf) < 1 + self._buf[0]:
            return None
        count = self._buf[0]
        if count == 0:
            self._refused(1)  # raises once the reason is all here
            return None
        types = bytes(self._buf[1 : 1 + count])
        del self._buf[: 1 + count]
        if SECURITY_NONE not in types:
            raise RfbError("the PC's VNC server wants a password; allowhelp runs x11vnc without")
        self._state = _Server.SECURITY_RESULT
        return bytes([1, SECURITY_NONE])

    def _result(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        if struct.unpack_from(">I", self._buf)[0] != 0:
            self._refused(4)
            return None
        self._state = _Server.SERVER_INIT
        return self._take(4)

    def _refused(self, at: int) -> None:
        """The server said no, with a reason string at ``at``: raise once it is here."""
        if len(self._buf) < at + 4:
            return
        length = min(struct.unpack_from(">I", self._buf, at)[0], MAX_REASON)
        if len(self._buf) < at + 4 + length:
            return
        raw = bytes(self._buf[at + 4 : at + 4 + length]).decode("utf-8", "replace")
        reason = plain_text(raw, 200) or "no reason given"
        raise RfbError(f"the PC's screen refused the connection: {reason}")

    def _server_init(self) -> bytes | None:
        if len(self._buf) < 24:
            return None
        width, height, bpp = struct.unpack_from(">HHB", self._buf)
        name_length = struct.unpack_from(">I", self._buf, 20)[0]
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise RfbError(f"the PC's screen claims an impossible size {width}x{height}")
        if bpp not in (8, 16, 32):
            raise RfbError(f"the PC's screen claims {bpp} bits per pixel")
        if name_length > MAX_NAME:
            raise RfbError(f"the PC's screen sent a {name_length}-byte desktop name")
        head_and_name = self._take(24 + name_length)
        if head_and_name is None:
            return None
        self.width, self.height = width, height
        raw = head_and_name[24:].decode("utf-8", "replace")
        self.name = plain_text(raw, NAME_SHOWN)
        encoded = self.name.encode()
        self._state = _Server.PASS
        return head_and_name[:20] + struct.pack(">I", len(encoded)) + encoded
