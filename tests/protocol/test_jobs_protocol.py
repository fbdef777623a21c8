"""Fleet job messages on the control channel: type-checked and bounded like the rest."""

from __future__ import annotations

import json

import pytest

from allowhelp.protocol.control import MAX_LINE, Hello, InventoryReport, JobResult, JobRun, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.jobs import MAX_PAYLOAD, MAX_SCRIPT, JobSpec

RESULT = {
    "type": "job.result",
    "job_id": "j-0123456789abcdef",
    "state": "succeeded",
    "exit_code": 0,
    "output": "ok",
    "started": 1_796_000_000.5,
    "finished": 1_796_000_001.5,
}


def line(**changes: object) -> bytes:
    return json.dumps({**RESULT, **changes}).encode()


def test_a_result_round_trips() -> None:
    result = decode(line())
    assert isinstance(result, JobResult) and result.exit_code == 0
    assert decode(result.encode().rstrip(b"\n")) == result


@pytest.mark.parametrize(
    "changes",
    [
        {"exit_code": True},
        {"exit_code": 1.5},
        {"exit_code": -2},
        {"exit_code": 2**31},
        {"output": "x" * 8001},
        {"started": 1e12},
        {"started": -1},
        {"job_id": "../../etc"},
        {"state": "s" * 21},
    ],
)
def test_a_bad_result_is_a_protocol_error(changes: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode(line(**changes))


def test_old_hellos_mean_no_jobs() -> None:
    old = decode(b'{"type":"hello","hostname":"h","os":"o","user":"u","version":"0.1.0"}')
    assert isinstance(old, Hello) and old.jobs is False


def test_the_longest_job_fits_one_control_line() -> None:
    spec = JobSpec(
        job_id="j-" + "f" * 20,
        agent_id="a-" + "x" * 20,
        action="script",
        reason="r" * 500,
        issuer="i" * 100,
        created=1_796_000_000.123456,
        expires=1_796_086_400.123456,
        timeout=3600,
        script="\u00e9" * MAX_SCRIPT,  # two bytes each in UTF-8
    )
    assert len(spec.payload()) > MAX_PAYLOAD  # the broker refuses this one (orders.py) ...
    fitting = JobSpec(**{**spec.__dict__, "script": "x" * MAX_SCRIPT})
    assert len(fitting.payload()) <= MAX_PAYLOAD
    message = JobRun(job_id=fitting.job_id, payload=fitting.encoded(), signature="A" * 88)
    encoded = message.encode()
    assert len(encoded) <= MAX_LINE  # ... and everything it accepts fits
    assert decode(encoded.rstrip(b"\n")) == message


def test_an_inventory_part_is_bounded() -> None:
    good = {
        "type": "inventory",
        "os": "Debian",
        "kernel": "6.1",
        "disk_total": 5e11,
        "disk_free": 1e11,
        "memory_total": 1.6e10,
        "last_boot": 1_796_000_000.0,
        "package_count": 2,
        "packages": "a 1\nb 2",
        "part": 0,
        "parts": 1,
    }
    assert isinstance(decode(json.dumps(good).encode()), InventoryReport)
    with pytest.raises(ProtocolError):
        decode(json.dumps({**good, "packages": "x" * 12001}).encode())
    with pytest.raises(ProtocolError):
        decode(json.dumps({**good, "disk_total": 1e18}).encode())
