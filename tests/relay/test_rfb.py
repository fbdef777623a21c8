"""The screen relay's RFB checkers, without sockets: boundaries, drops, bounds."""

from __future__ import annotations

import struct

import pytest

from allowhelp.broker.relay.rfb import (
    MAX_CUT_TEXT,
    VERSION,
    ClientFilter,
    RfbError,
    RfbTooLarge,
    ServerChecker,
)

HANDSHAKE = VERSION + b"\x01" + b"\x01"  # version, security None, ClientInit (shared)
PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
SET_PIXEL_FORMAT = b"\x00\0\0\0" + PIXEL_FORMAT
FB_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 800, 600)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 20)
CUT = struct.pack(">BxxxI", 6, 5) + b"hello"
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
XVP = bytes([250, 0, 1, 2])
DESKTOP_SIZE = struct.pack(">BxHHBx", 251, 1024, 768, 1) + struct.pack(">IHHHHI", 0, 0, 0, 1, 1, 0)
FENCE = struct.pack(">BxxxIB", 248, 0, 3) + b"abc"
CONTINUOUS = struct.pack(">BBHHHH", 150, 1, 0, 0, 800, 600)


def encodings(*values: int) -> bytes:
    return struct.pack(f">BxH{len(values)}i", 2, len(values), *values)


def feed_split(flt: ClientFilter, data: bytes, size: int) -> bytes:
    return b"".join(flt.feed(data[i : i + size]) for i in range(0, len(data), size))


CONTROL_STREAM = HANDSHAKE + SET_PIXEL_FORMAT + FB_REQUEST + KEY + POINTER + CUT + QEMU_KEY
CONTROL_STREAM += XVP + DESKTOP_SIZE + FENCE + CONTINUOUS + FB_REQUEST


@pytest.mark.parametrize("split", [1, 2, 3, 7, 13, 64, 10_000])
def test_control_passes_everything_across_any_split(split: int) -> None:
    assert feed_split(ClientFilter(view_only=False), CONTROL_STREAM, split) == CONTROL_STREAM


def test_whole_messages_pass_without_a_copy() -> None:
    """A paste streams 256 KiB clipboard messages: the filter must not copy them."""
    flt = ClientFilter(view_only=False)
    flt.feed(HANDSHAKE)
    big = struct.pack(">BxxxI", 6, MAX_CUT_TEXT) + b"p" * MAX_CUT_TEXT
    assert flt.feed(big) is big
    both = big + KEY
    assert flt.feed(both) is both
    assert flt.feed(big[:100]) == b""  # an unfinished message waits, whole
    assert flt.feed(big[100:] + KEY[:3]) == big
    assert flt.feed(KEY[3:]) == KEY


def test_ready_after_client_init() -> None:
    flt = ClientFilter(view_only=False)
    flt.feed(HANDSHAKE[:-1])
    assert not flt.ready
    flt.feed(HANDSHAKE[-1:])
    assert flt.ready


@pytest.mark.parametrize("split", [1, 5, 11, 10_000])
def test_view_only_drops_every_input_message(split: int) -> None:
    flt = ClientFilter(view_only=True)
    out = feed_split(flt, CONTROL_STREAM, split)
    kept = HANDSHAKE + SET_PIXEL_FORMAT + FB_REQUEST + FENCE + CONTINUOUS + FB_REQUEST
    assert out == kept
    assert flt.dropped == 6  # key, pointer, clipboard, QEMU key, xvp, desktop size


def test_encodings_the_relay_cannot_follow_are_removed() -> None:
    flt = ClientFilter(view_only=False)
    flt.feed(HANDSHAKE)
    extended_mouse, gii, tight, cursor = -316, -305, 7, -239
    assert flt.feed(encodings(tight, extended_mouse, cursor, gii)) == encodings(tight, cursor)


def test_view_only_also_hides_input_encodings_from_the_pc() -> None:
    flt = ClientFilter(view_only=True)
    flt.feed(HANDSHAKE)
    clipboard = 0xC0A1E5CE - 2**32
    assert flt.feed(encodings(0, -258, -309, clipboard)) == encodings(0)
    control = ClientFilter(view_only=False)
    control.feed(HANDSHAKE)
    assert control.feed(encodings(0, -258, clipboard)) == encodings(0, -258, clipboard)


def test_extended_clipboard_length_is_negative() -> None:
    flt = ClientFilter(view_only=False)
    flt.feed(HANDSHAKE)
    extended = struct.pack(">Bxxxi", 6, -4) + b"\x00\x00\x00\x01"
    assert flt.feed(extended + FB_REQUEST) == extended + FB_REQUEST


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"RFB 003.003\n", "RFB 003.003"),
        (b"GET / HTTP/1.1\r\n", "did not start"),
        (VERSION + b"\x02", "security type 2"),
        (HANDSHAKE + b"\x07", "unknown client message type 7"),
        (HANDSHAKE + bytes([255, 1]), "unknown QEMU"),
        (HANDSHAKE + struct.pack(">BxH", 2, 60000), "SetEncodings with 60000"),
        (HANDSHAKE + struct.pack(">BxxxIB", 248, 0, 200), "ClientFence with 200"),
    ],
)
def test_what_it_cannot_parse_is_an_error(stream: bytes, error: str) -> None:
    with pytest.raises(RfbError, match=error):
        ClientFilter(view_only=False).feed(stream)


def test_huge_clipboard_is_too_large() -> None:
    flt = ClientFilter(view_only=True)  # even when it would be dropped: the length is a lie
    with pytest.raises(RfbTooLarge):
        flt.feed(HANDSHAKE + struct.pack(">BxxxI", 6, MAX_CUT_TEXT + 1))


def server_init(width: int = 800, height: int = 600, name: bytes = b"desk") -> bytes:
    return struct.pack(">HH", width, height) + PIXEL_FORMAT + struct.pack(">I", len(name)) + name


def server_stream(types: bytes = b"\x01", init: bytes | None = None) -> bytes:
    init = server_init() if init is None else init
    return VERSION + bytes([len(types)]) + types + b"\0\0\0\0" + init


@pytest.mark.parametrize("split", [1, 3, 24, 10_000])
def test_server_handshake_passes_and_then_bytes_flow_as_they_are(split: int) -> None:
    checker = ServerChecker()
    update = b"\x00\x00\x00\x01" + b"\xab" * 100
    stream = server_stream() + update
    out = b"".join(checker.feed(stream[i : i + split]) for i in range(0, len(stream), split))
    assert out == stream
    assert checker.ready and (checker.width, checker.height) == (800, 600)
    assert checker.name == "desk"


def test_security_is_narrowed_to_none() -> None:
    out = ServerChecker().feed(server_stream(types=bytes([2, 16, 1])))
    assert out == server_stream(types=b"\x01")


def test_a_password_only_server_is_refused() -> None:
    with pytest.raises(RfbError, match="password"):
        ServerChecker().feed(server_stream(types=b"\x02"))


def test_a_refusal_reason_becomes_the_error() -> None:
    reason = b"too many \x1b[31mclients"
    with pytest.raises(RfbError, match=r"refused the connection: too many \[31mclients"):
        ServerChecker().feed(VERSION + b"\x00" + struct.pack(">I", len(reason)) + reason)


def test_the_desktop_name_is_made_plain_text() -> None:
    name = "<b>x</b>\u202e\x07 ok".encode()
    out = ServerChecker().feed(server_stream(init=server_init(name=name)))
    assert out.endswith(struct.pack(">I", 11) + b"<b>x</b> ok")


@pytest.mark.parametrize(
    ("init", "error"),
    [
        (server_init(width=65535, height=65535), "impossible size"),
        (server_init(width=0), "impossible size"),
        (struct.pack(">HH", 8, 8) + PIXEL_FORMAT + struct.pack(">I", 2**32 - 1), "desktop name"),
        (struct.pack(">HHB", 8, 8, 7) + PIXEL_FORMAT[1:] + struct.pack(">I", 0), "7 bits"),
    ],
)
def test_a_hostile_server_init_is_refused(init: bytes, error: str) -> None:
    with pytest.raises(RfbError, match=error):
        ServerChecker().feed(server_stream(init=init))


def test_a_name_announced_but_not_yet_sent_waits() -> None:
    checker = ServerChecker()
    stream = server_stream(init=server_init(name=b"n" * 100))
    assert checker.feed(stream[:-50]) == VERSION + b"\x01\x01" + b"\0\0\0\0"
    assert not checker.ready
    assert checker.feed(stream[-50:]).endswith(b"n" * 100)
    assert checker.ready
