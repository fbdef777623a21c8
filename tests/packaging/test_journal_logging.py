"""Log lines under systemd: no second timestamp, sd-daemon ``<N>`` level prefixes.

systemd tells a service that its stderr is the journal with ``JOURNAL_STREAM``
(the stream's device:inode); here a file stands in for that stream.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from allowhelp.runtime import JournalFormatter
from harness import Broker

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def serve_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream_of: Path | None) -> str:
    """Start and stop a real broker whose stderr is its log file; return that log."""
    broker = Broker(tmp_path / "broker")
    broker.log.touch()
    stream = (stream_of or broker.log).stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{stream.st_dev}:{stream.st_ino}")
    try:
        broker.start()
    finally:
        assert broker.stop() == 0
    return broker.log.read_text()


def test_broker_logs_for_the_journal_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = serve_once(tmp_path, monkeypatch, None).splitlines()
    assert any(
        line.startswith("<6>INFO allowhelp.broker.node.server: allowhelp broker ready")
        for line in lines
    ), lines
    for line in lines:
        assert re.match(r"<[2-7]>[A-Z]+ [\w.]+: ", line), line
        assert not TIMESTAMP.search(line), line


def test_a_redirected_child_keeps_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOURNAL_STREAM inherited, but stderr is another file: plain timestamped lines."""
    other = tmp_path / "journal-stand-in"
    other.touch()
    lines = serve_once(tmp_path, monkeypatch, other).splitlines()
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line), line


def test_every_line_of_a_traceback_carries_the_level() -> None:
    formatter = JournalFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("broken\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "allowhelp.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0] == "<3>ERROR allowhelp.x: failed"
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    warning = logging.LogRecord("allowhelp.x", logging.WARNING, __file__, 1, "slow", None, None)
    assert formatter.format(warning) == "<4>WARNING allowhelp.x: slow"
