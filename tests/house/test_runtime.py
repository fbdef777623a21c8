"""Process set-up: the malloc thresholds really change where large buffers live."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: count glibc's mmapped chunks (mallinfo2().hblks)
# while a 256 KiB buffer is alive, before and after tune_malloc().
PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2

    def mmapped_while_alive():
        before = libc.mallinfo2().hblks
        buf = bytearray(256 * 1024)
        during = libc.mallinfo2().hblks
        del buf
        return during - before

    from allowhelp.runtime import tune_malloc
    default = mmapped_while_alive()
    applied = tune_malloc()
    tuned = mmapped_while_alive()
    print(default, applied, tuned)
    """
)


def test_tuned_malloc_keeps_packet_buffers_off_mmap() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc 2.33+ only
    except (AttributeError, OSError):
        pytest.skip("not glibc 2.33 or later")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    default, applied, tuned = done.stdout.split()
    assert default == "1", "a 256 KiB buffer is mmapped by default"
    assert applied == "True"
    assert tuned == "0", "after tune_malloc it comes from the heap"
