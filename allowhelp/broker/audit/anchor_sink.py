"""The anchor sink: the chain's heads written to the anchor file and to syslog.

What anchors protect against, and the file's format, are ``audit/anchor.py``'s.
Once the file is there (found at open, begun, or written to), heads are appended
to it without creating it, and before each head the file is compared with what
this process last wrote to it (or found at open): its device and inode, and its
size. A file that went away (``deleted``: it is made again), another file in its
place (``replaced``: logrotate's ``create``) or one shorter than was written
(``truncated``: ``copytruncate``) goes on only with the head being written marked
``restarted`` (so ``audit verify --anchors`` says it vouches only from there on),
an error in the log naming it, and that head's syslog line sent as a warning. The
sink runs inside the log's commit, so it chains nothing itself: it keeps an
:class:`AnchorChange` that the writer takes after the batch
(:meth:`AnchorSink.take_changes`) and chains as ``audit.anchors.missing``.

An inode alone does not make a file another one: where inodes are not stable (sshfs
without ``use_ino``, CIFS ``noserverino``, an autofs remount) the same file can show
a new one. So on another device or inode, with the size not smaller, the sink reads
back the last line it wrote (or found at open) where it put it (one ``pread``): the
same bytes there are the same file. Only other bytes there, a smaller size or a file
gone is a change.

A file cut short mid-line (``copytruncate`` at an odd offset, a partial write) is
never joined to the next head (a leftover ``1`` and ``15:…`` would read ``115:…``):
before appending to a file whose last byte is not a newline, the sink ends that
line and writes :data:`CUT_MARK` (a ``#`` line, which the reader skips like any
line that is not a head; the fragment alone is no head either).

A change that could not be written (the file's folder gone) is told once, not at
every head while it stays lost; when the file can be written again, that is told
and chained too (marked ``restarted``). Any head written clears that state, so a
later change is always told.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.broker.audit.anchor import BEGUN, RESTARTED, Change
from allowhelp.broker.audit.status import AnchorState, utc_now

if TYPE_CHECKING:
    from allowhelp.broker.audit.syslog import SyslogForwarder

log = logging.getLogger(__name__)

# Written after a newline that ends a line cut short, before the next head.
CUT_MARK = "# cut short before this line"
_TAIL_MAX = 1024  # the most read back of a file's last line at open


@dataclass(frozen=True)
class AnchorChange:
    """The anchor file found deleted, replaced or truncated while the chain was open,
    when head ``seq`` was written (marked ``restarted``, unless it could not be): the
    writer chains it as ``audit.anchors.missing`` once the batch is committed."""

    why: Change
    path: str
    seq: int
    hash: str
    restarted: bool  # False: the head could not be written there (logged, counted)

    def details(self) -> dict[str, object]:
        return {"why": self.why, "head": f"{self.seq}:{self.hash}", "restarted": self.restarted}


_SAID: dict[Change, str] = {
    "deleted": "went away",
    "replaced": "was replaced by another file",
    "truncated": "was truncated (shorter than written)",
}


def _identity(found: os.stat_result) -> tuple[int, int, int]:
    return found.st_dev, found.st_ino, found.st_size


class AnchorSink:
    """Writes heads to the anchor file and to syslog; called by the audit log
    under its lock, right after a commit, so heads go out in seq order."""

    def __init__(
        self, path: Path | None, every: int, forwarder: SyslogForwarder | None = None
    ) -> None:
        if every < 1:
            raise ValueError("heads are anchored every 1 or more records")
        self.path = path
        self.every = every
        self._forwarder = forwarder
        self._last_seq = 0  # the head anchored last, or found at open
        self._written_seq = 0  # the head last written out (the stop anchor skips a repeat)
        # The file is there (found at open, begun or written): it is never created again
        # silently, a write that finds it gone makes it again marked ``restarted``.
        self._established = False
        # (st_dev, st_ino, st_size) after this process last wrote the file (or found it):
        # another inode, or a smaller size, at the next head is a change (logrotate).
        self._seen: tuple[int, int, int] | None = None
        self._lost = False  # a change told and the file not written since: not told twice
        # (offset, bytes) of the last line this process wrote (or found at open): the same
        # bytes there under another inode are the same file (sshfs, CIFS), not a new one.
        self._tail: tuple[int, bytes] | None = None
        self._changes: list[AnchorChange] = []  # for the writer to chain (take_changes)
        self._lock = threading.Lock()
        self._state = AnchorState(
            str(path) if path is not None else None, every, forwarder is not None
        )

    @property
    def state(self) -> AnchorState:
        return self._state

    def start_at(self, seq: int) -> None:
        """The head found at open: the next anchor comes ``every`` records later."""
        self._last_seq = seq

    def found(self) -> None:
        """The file was there at open (a head in it, or begun): from now on it is
        appended to, never created, and compared with what it was then."""
        self._established = True
        if self.path is not None:
            try:
                self._seen = _identity(os.stat(self.path))
                self._tail = _last_line(self.path)
            except OSError:
                self._seen = None  # compared from the first head written on

    def take_changes(self) -> list[AnchorChange]:
        """The changes found since the last call (the writer chains them)."""
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def begin(self) -> None:
        """Start the file on an empty chain, before any head: a later start that
        finds it without a head knows it was not deleted. Never raises."""
        if self.path is not None:
            fd, _, error = self._open()
            if fd is not None:
                error = self._write(fd, f"{BEGUN} at {utc_now()}\n")
            if error:
                log.error("audit anchor file %s not begun: %s", self.path, error)

    def after_commit(self, seq: int, digest: str) -> None:
        if seq - self._last_seq >= self.every:
            self.anchor(seq, digest, "every")

    def at_stop(self, seq: int, digest: str) -> None:
        if seq > 0 and seq != self._written_seq:
            self.anchor(seq, digest, "stop")

    def anchor(self, seq: int, digest: str, why: str) -> None:
        """Never raises: a copy that cannot be written is logged and counted."""
        with self._lock:
            self._last_seq = self._written_seq = seq
            now = utc_now()
            error = ""
            if self.path is not None:
                fd, change, error = self._open()
                mark = why if change is None else RESTARTED  # never gone on with silently
                if fd is not None:
                    error = self._write(fd, f"{seq}:{digest} {now} {mark}\n")
                    if not error:
                        self._lost = False  # written again: the next change is told
                if change is not None:  # told, and chained by the writer after the batch
                    why = why if error else RESTARTED
                    self._changed(change, seq, digest, error)
            if self._forwarder is not None:
                try:
                    self._forwarder.submit_anchor(seq, digest, now, why)
                except Exception:
                    log.warning("the audit head %d could not be queued for syslog", seq)
            state = self._state
            failures = state.failures + (1 if error else 0)
            if error and (failures == 1 or failures % 100 == 0):
                log.error(
                    "audit head %d not anchored in %s (%d so far): %s",
                    seq,
                    self.path,
                    failures,
                    error,
                )
            self._state = AnchorState(
                state.file,
                state.every,
                state.syslog,
                last_seq=seq if not error else state.last_seq,
                last_hash=digest if not error else state.last_hash,
                last_at=now if not error else state.last_at,
                failures=failures,
                last_error=error or state.last_error,
            )

    def _changed(self, change: Change, seq: int, digest: str, error: str) -> None:
        """Say a change of the file, and keep it for the writer to chain; a file
        still lost since the last one told (its folder gone) is not told again, one
        that comes back (written again) is."""
        lost, self._lost = self._lost, bool(error)
        if lost and error:
            return
        if error:
            then = f"head {seq} cannot be written to it ({error})"
        else:
            again = "is made again, starting" if change == "deleted" else "goes on"
            then = f"it {again} at head {seq} marked {RESTARTED}; its heads vouch only from then on"
        log.error(
            "AUDIT ANCHOR FILE %s %s while the broker ran: %s; chaining audit.anchors.missing",
            self.path,
            _SAID[change],
            then,
        )
        self._changes.append(AnchorChange(change, str(self.path), seq, digest, not error))

    def _open(self) -> tuple[int | None, Change | None, str]:
        """The file opened to append, and how it changed since this process last
        wrote it (or found it), None if it did not; the reason in words when it
        cannot be opened. A file once there is not created again unmarked:
        ``deleted`` when it went away (it is made again here)."""
        assert self.path is not None
        flags = os.O_RDWR | os.O_APPEND  # read: its last byte, and the last line written
        change: Change | None = None
        try:
            if not self._established:
                fd = os.open(self.path, flags | os.O_CREAT, 0o600)
            else:
                try:
                    fd = os.open(self.path, flags)
                except FileNotFoundError:
                    change = "deleted"
                    fd = os.open(self.path, flags | os.O_CREAT, 0o600)
        except OSError as exc:  # its folder gone too: a failure, counted
            return None, change, exc.strerror or str(exc)
        self._established = True
        seen = self._seen
        if change is None and seen is not None:
            try:
                now = _identity(os.fstat(fd))
            except OSError:
                now = seen
            if now[:2] != seen[:2]:
                if now[2] < seen[2] or not self._same_tail(fd):
                    change = "replaced"
                else:  # the same bytes: an unstable inode (sshfs, CIFS), the same file
                    self._seen = now
            elif now[2] < seen[2]:
                change = "truncated"
        return fd, change, ""

    def _same_tail(self, fd: int) -> bool:
        """The last line written (or found) is where it was, byte for byte."""
        if self._tail is None:
            return False
        offset, data = self._tail
        try:
            return os.pread(fd, len(data), offset) == data
        except OSError:
            return False

    def _write(self, fd: int, line: str) -> str:
        """Append and fsync one line, close; the reason in words when it failed, else ''.
        A file whose last line was cut short gets that line ended and :data:`CUT_MARK`."""
        data = line.encode("ascii")
        try:
            try:
                size = os.fstat(fd).st_size
                lead = b""
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    lead = f"\n{CUT_MARK}\n".encode("ascii")
                os.write(fd, lead + data)
                end = os.lseek(fd, 0, os.SEEK_CUR)  # where this append ended (O_APPEND)
                os.fsync(fd)
                self._seen = _identity(os.fstat(fd))
                self._tail = (end - len(data), data)  # not the size: another may append
            finally:
                os.close(fd)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""


def _last_line(path: Path) -> tuple[int, bytes] | None:
    """(offset, bytes) of the file's last whole line; None if it has none (or is cut)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_MAX)
        handle.seek(start)
        data = handle.read()
    if not data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n", 0, len(data) - 1)
    if cut < 0 and start > 0:
        return None  # longer than read back: compared from the first head written on
    return start + cut + 1, data[cut + 1 :]
