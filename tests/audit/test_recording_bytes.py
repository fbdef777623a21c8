"""The shell recording's bytes are exactly what the standard library's JSON encoder
writes for each event, whatever the shell prints (the recorder escapes with
``orjson`` for speed; a player, an export or a digest check must not see a
difference), and its digest is of those bytes."""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest

from allowhelp.broker.audit.recording import AsciicastRecorder, file_sha256

# Every class of code point the escaper treats differently, and bytes that are not UTF-8.
CHUNKS = [
    bytes(range(0x80)),  # every ASCII byte: controls, quote, backslash, DEL
    '"\\/\b\f\n\r\t é ß \u2028 \u2029 \ufeff \ufffd \U0001f600 \U0010ffff'.encode(),
    b"\xff\xfe invalid \xc3( \xe2\x82 \xf0\x9f\x98",  # torn and invalid sequences
    "split here: é".encode()[:-1],  # the rest of the sequence comes next
    "é\x1b[31mred\x1b[0m\r\n".encode()[1:],
    b"",
    b"a" * 70_000,  # a bulk batch: goes to the writer thread
    "and a torn end é".encode()[:-1],  # close() writes its replacement character
]


def _fuzz(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    text = "".join(
        chr(rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0xD800), 0x1F600]))
        for _ in range(20_000)
    ).encode()
    noise = bytes(rng.randrange(256) for _ in range(4_000))
    data = text[:10_000] + noise + text[10_000:]
    cuts = sorted(rng.sample(range(1, len(data)), count - 1))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


@pytest.mark.parametrize("chunks", [CHUNKS, _fuzz(19, 300)], ids=["classes", "fuzz"])
async def test_the_file_is_what_json_dumps_writes(
    tmp_path: Path, chunks: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = (i / 7 for i in itertools.count())
    monkeypatch.setattr(AsciicastRecorder, "_elapsed", lambda self: round(next(ticks), 6))
    recorder = AsciicastRecorder(tmp_path, "bytes", 80, 24, title='a "quoted" é title')
    for chunk in chunks:
        recorder.output(chunk)
        await recorder.flushed()
    recorder.resize(132, 43)
    digest = recorder.close()
    seal = await recorder.sealed()

    header = json.loads(recorder.path.read_bytes().split(b"\n", 1)[0])
    expected = [json.dumps(header, ensure_ascii=False)]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    times = (i / 7 for i in itertools.count())
    events = [("o", decoder.decode(chunk)) for chunk in chunks]
    events += [("r", "132x43"), ("o", decoder.decode(b"", final=True))]  # close() ends it
    for code, text in events:
        if text:
            expected.append(json.dumps([round(next(times), 6), code, text], ensure_ascii=False))
    want = "".join(line + "\n" for line in expected).encode()

    assert recorder.path.read_bytes() == want
    assert digest == seal.sha256 == file_sha256(recorder.path) == hashlib.sha256(want).hexdigest()
    assert seal.size == len(want)
