"""The shell's tail an invitee gets on joining (#18): bounded, cut at a full clear,
never starting inside a line (pure logic: ``relay/scrollback.py``)."""

from __future__ import annotations

import random

from allowhelp.broker.relay.scrollback import Scrollback, drop_tail, keep_tail, tail_of


def test_the_tail_keeps_everything_under_its_limit() -> None:
    tail = Scrollback(limit=100)
    tail.add(b"$ ls\r\n")
    tail.add(b"a b c\r\n$ ")
    assert tail.tail() == b"$ ls\r\na b c\r\n$ "


def test_the_tail_is_bounded_and_starts_on_a_whole_line() -> None:
    tail = Scrollback(limit=64)
    for n in range(100):
        tail.add(f"line {n:03d} \x1b[1m\u00e9\x1b[0m\r\n".encode())
    kept = tail.tail()
    assert len(kept) <= 64
    assert kept.startswith(b"line ") and kept.endswith(b"line 099 \x1b[1m\xc3\xa9\x1b[0m\r\n")
    assert b"line 098" in kept


def test_one_chunk_over_the_limit_keeps_its_end() -> None:
    tail = Scrollback(limit=32)
    tail.add(b"x" * 100 + b"\nthe end\n")
    assert tail.tail() == b"the end\n"


def test_a_full_clear_drops_what_came_before() -> None:
    for clear in (b"\x1b[2J", b"\x1b[3J", b"\x1bc"):
        tail = Scrollback(limit=1000)
        tail.add(b"secret before the clear\r\n")
        tail.add(b"more \x1b[H" + clear + b"after")
        tail.add(b" and on\r\n")
        assert tail.tail() == clear + b"after and on\r\n"


def test_tails_are_found_by_session_until_dropped() -> None:
    tail = keep_tail("ahinvsession1")
    tail.add(b"hello\r\n")
    assert tail_of("ahinvsession1") == b"hello\r\n"
    drop_tail("ahinvsession1", Scrollback())  # not this session's tail: kept
    assert tail_of("ahinvsession1") == b"hello\r\n"
    drop_tail("ahinvsession1", tail)
    assert tail_of("ahinvsession1") == b""


def test_a_clear_split_across_two_chunks_is_found() -> None:
    tail = Scrollback(limit=1000)
    tail.add(b"old screen\r\n\x1b[")
    tail.add(b"2Jnew screen")
    assert tail.tail() == b"\x1b[2Jnew screen"


def test_the_tail_is_exactly_the_last_bytes_whatever_the_chunks() -> None:
    """Against the plain definition: chunks of every size, single bytes (echoes)
    after a full tail, a chunk as large as the limit; no clears, no line breaks
    (so nothing is cut at a line)."""
    rng = random.Random(19)
    for limit in (1, 7, 64, 4096):
        tail, everything = Scrollback(limit=limit), bytearray()
        for n in range(400):
            size = rng.choice((1, 1, 1, 2, limit - 1, limit, limit + 3, rng.randint(1, 3 * limit)))
            data = bytes([65 + n % 26]) * max(size, 1)
            tail.add(data)
            everything += data
            assert tail.tail() == bytes(everything[-limit:]), (limit, n)
