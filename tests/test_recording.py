"""The asciicast recorder writes what a JSON encoder would, and its digest covers it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from allowhelp.broker.audit.recording import AsciicastRecorder, file_sha256

HOSTILE = [
    'quote " and backslash \\ and slash /',
    "controls \x00\x01\x07\x1b[31m\x7f tab\t cr\r lf\n",
    "line separators \u2028 \u2029 and emoji \U0001f600 é",
    "",
]


def test_events_are_the_json_any_player_reads(tmp_path: Path) -> None:
    recorder = AsciicastRecorder(tmp_path, "s1", 80, 24, title="t")
    for text in HOSTILE:
        recorder.output(text.encode())
    recorder.output("split é".encode()[:-1])  # half a UTF-8 sequence waits for the rest
    recorder.output("é".encode()[-1:])
    recorder.resize(100, 30)
    digest = recorder.close()

    lines = recorder.path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    events = [json.loads(line) for line in lines[1:]]
    texts = [text for text in HOSTILE if text]
    assert [e[2] for e in events if e[1] == "o"] == [*texts, "split ", "é"]
    assert events[-1][1:] == ["r", "100x30"]
    times = [e[0] for e in events]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    for line, event in zip(lines[1:], events, strict=True):
        assert line == json.dumps(event, ensure_ascii=False).encode()
    assert digest == file_sha256(recorder.path)
    assert digest == hashlib.sha256(recorder.path.read_bytes()).hexdigest()


def test_nothing_is_written_after_close(tmp_path: Path) -> None:
    recorder = AsciicastRecorder(tmp_path, "s2", 80, 24, title="t")
    digest = recorder.close()
    recorder.output(b"late")
    recorder.resize(10, 10)
    assert recorder.close() == digest == file_sha256(recorder.path)
    assert len(recorder.path.read_bytes().splitlines()) == 1
