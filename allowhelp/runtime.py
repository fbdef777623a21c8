"""Process set-up shared by the broker's and the agent's commands.

``run_command``: what both command lines do around a command: owner-only
files, logging, one plain line per error (exit 2), 130 on Ctrl-C.
Logging goes to stderr; when stderr is systemd's journal the lines carry
no timestamp of their own and start with sd-daemon's ``<N>`` level prefix.

The event loop: uvloop when it is installed, else asyncio's own.

glibc malloc thresholds. Why: relaying 128 KiB SSH packets means allocating and freeing buffers just
over glibc's default 128 KiB mmap threshold, so every packet costs an
``mmap``/``munmap`` pair and the page faults to fill it. Measured with the
product's tunnel (docs/benchmarks.md, section 1): 128 KiB packets *halved*
the download rate on default malloc settings, and gave 1.6-2x the rate of
32 KiB packets with a 1 MiB mmap threshold and a 4 MiB trim threshold. This
is what ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576:
glibc.malloc.trim_threshold=4194304`` does, applied from inside the process
so that no service file or wrapper has to remember it.

It changes nothing but speed and a few MiB of heap kept for reuse; on a C
library other than glibc it does nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the thresholds; True when glibc took both. Safe to call twice."""
    import ctypes  # noqa: PLC0415 - not in the doorbell (agent/doorbell.py), which never tunes
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.info("malloc thresholds not applied: relaying large packets will be slower")
    return done


def run_event_loop(main: Coroutine[object, object, T]) -> T:
    """Run ``main`` on uvloop when it is installed (the broker extra brings it).

    Measured (docs/benchmarks.md, section 2): uvloop in the broker and the
    agent took a keystroke's p99 from 3.75x to 3.10x OpenSSH's. The agent's
    own dependencies stay the SSH stack: without uvloop it runs on asyncio.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        import asyncio  # noqa: PLC0415 - never in the doorbell (agent/doorbell.py)

        return asyncio.run(main)
    return uvloop.run(main)


# syslog priorities (sd-daemon(3)): journald reads a "<N>" line prefix as the level.
JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def stderr_is_journal() -> bool:
    """True when stderr is systemd's journal stream.

    systemd sets ``JOURNAL_STREAM`` to the ``DEVICE:INODE`` of the stream it
    connected; a child whose stderr was redirected elsewhere inherits the
    variable, so the stream itself is compared, as sd-daemon(3) advises.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """No timestamp (the journal stamps each line); each line starts ``<N>``.

    Every line of a multi-line record (a traceback) carries the prefix, since
    the journal stores each line as an entry of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def configure_logging(*, verbose: bool) -> None:
    """Log to stderr: timestamped on a terminal or file, journal-style under systemd."""
    handler = logging.StreamHandler()
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)


_umask_found: list[int] = []  # the umask this process started with (``run_command``)


def inherited_umask() -> int:
    """The umask this process started with, before ``run_command`` made it 077: what
    the user's own tools create with, for what we create for them (their files)."""
    return _umask_found[0] if _umask_found else 0o022


def run_command(
    prog: str,
    args: argparse.Namespace,
    failures: tuple[type[BaseException], ...],
    *,
    error_line: str = "%(prog)s: error: %(message)s",
) -> int:
    """Run the command ``args.func`` names; ``failures`` are told as one line, exit 2:
    ``error_line`` (``PROG: error: ...``, in the user's language when the caller has it)."""
    _umask_found.append(os.umask(0o077))  # data, keys, databases and WAL files: owner only
    configure_logging(verbose=args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except failures as exc:
        print(error_line.rstrip("\n") % {"prog": prog, "message": exc}, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
