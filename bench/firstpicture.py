"""Where the first screen picture's time goes, from the click (issue #19).

``python -m bench.firstpicture [--rounds N] [--json FILE]``

Two parts, both on a private Xvfb kept busy by ``bench.peers.animate`` (as in
``bench/run --only peers``):

* **path**: a real broker and agent (``bench.screen.Allowhelp``, the agent on
  the Xvfb). Each round stamps, from the technician's ``POST /api/v1/sessions``
  (the click): the request answered; the prompt seen at the agent; the Allow
  sent (the agent's local socket, as ``allowhelp-agent allow`` does); the
  session seen active; the screen WebSocket open; the engine started (the
  agent's ``screen pid=... started`` log line, millisecond clock); x11vnc's RFB
  version received; ServerInit; the first FramebufferUpdate decoded (ZRLE,
  inflated). The prompt and the active state are polled every 5 ms, as in
  ``bench.peers.ours``.
* **engine**: x11vnc alone, the agent's own argv (``screen.x11vnc_argv``) on a
  socketpair, with and without the viewer's version said ahead
  (``agent/rfbgreeting.py``), interleaved: spawn to version, ServerInit and the
  first update.

Medians over the rounds, in milliseconds. Nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import websockets

from allowhelp.agent.rfbgreeting import RFB_VERSION
from allowhelp.agent.x11vnc import x11vnc_argv
from bench.common import Procs, dump_json, fmt, log, machine, table, wait_for
from bench.peers.animate import start_busy_screen
from bench.peers.ours import ZRLE, Inflating, _agent_call
from bench.screen import (
    Allowhelp,
    RfbStream,
    handshake,
    set_encodings,
    set_pixel_format_32,
    update_request,
)
from bench.sinks import recv_exact

ROOT = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"^(\S+ \S+) INFO \S+: screen pid=\d+ started")
PATH_STEPS = (
    "requested",
    "prompted",
    "allowed",
    "active",
    "socket_open",
    "engine_started",
    "rfb_version",
    "server_init",
    "first_update",
)
ENGINE_STEPS = ("rfb_version", "server_init", "first_update")


def _log_time(stamp: str) -> float:
    """``2026-12-06 20:33:01,123`` (the agent's logging asctime, local time) → epoch s."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _engine_started(agent_log: Path, after: float) -> float | None:
    """The last ``screen pid=... started`` of the agent's log at or after ``after``."""
    found = None
    for line in agent_log.read_text(errors="replace").splitlines():
        match = STARTED.match(line)
        if match and (at := _log_time(match.group(1))) >= after - 0.002:
            found = at
    return found


def _consent(stack: Allowhelp, stamps: dict[str, float]) -> str:
    """The click, the prompt, the Allow and the active state, each stamped (epoch s)."""
    desk = stack.desk.client
    answer = desk.post(
        "/api/v1/sessions",
        json={"agent_id": stack.agent.agent_id, "kind": "screen", "reason": "first picture"},
    )
    if answer.status_code != 201:
        raise RuntimeError(f"session request failed: {answer.status_code} {answer.text}")
    stamps["requested"] = time.time()
    session_id = str(answer.json()["id"])

    def asked() -> bool:
        pending = _agent_call(stack, {"op": "pending"})["pending"]
        return any(p["session_id"] == session_id for p in pending)

    wait_for(asked, 20, "the consent prompt", step=0.005)
    stamps["prompted"] = time.time()
    _agent_call(stack, {"op": "allow", "session_id": session_id})
    stamps["allowed"] = time.time()
    wait_for(
        lambda: desk.get(f"/api/v1/sessions/{session_id}").json()["state"] == "active",
        20,
        "the session to be active",
        step=0.005,
    )
    stamps["active"] = time.time()
    return session_id


async def path_round(stack: Allowhelp) -> dict[str, float]:
    """One click to first picture; each step in ms from the click."""
    stamps: dict[str, float] = {}
    t0 = time.time()
    session_id = await asyncio.to_thread(_consent, stack, stamps)
    try:
        async with websockets.connect(
            subprotocols=["binary"],  # type: ignore[list-item]
            compression=None,
            max_size=None,
            **stack.ws_args(session_id, channel="screen"),
        ) as ws:
            stamps["socket_open"] = time.time()
            rfb = RfbStream(ws)
            await rfb.read(12, limit=30)
            stamps["rfb_version"] = time.time()
            rfb.buf[0:0] = RFB_VERSION  # handshake() reads the version itself
            init = await handshake(rfb)
            stamps["server_init"] = time.time()
            await rfb.send(set_pixel_format_32() + set_encodings([ZRLE]))
            await rfb.send(update_request(init, incremental=False))
            await Inflating(rfb, init).update()
            stamps["first_update"] = time.time()
    finally:
        await asyncio.to_thread(stack.end, session_id)
    await asyncio.to_thread(stack.wait_ended, session_id)
    started = _engine_started(stack.agent.config.parent / "agent.log", stamps["active"] - 1)
    if started is not None:
        stamps["engine_started"] = started
    return {step: (stamps[step] - t0) * 1000 for step in PATH_STEPS if step in stamps}


def engine_round(display: str, *, greet: bool) -> dict[str, float]:
    """x11vnc alone on a socketpair: ms from spawn to its version, ServerInit, first update."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {"DISPLAY": display, "PATH": os.environ.get("PATH", os.defpath), "HOME": "/tmp"}
    t0 = time.perf_counter()
    if greet:
        mine.sendall(RFB_VERSION)
    proc = subprocess.Popen(
        x11vnc_argv("x11vnc", display, view_only=False),
        stdin=theirs.fileno(),
        stdout=theirs.fileno(),
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    theirs.close()
    took: dict[str, float] = {}
    try:
        mine.settimeout(30)
        recv_exact(mine, 12)
        took["rfb_version"] = time.perf_counter() - t0
        if not greet:
            mine.sendall(RFB_VERSION)
        recv_exact(mine, recv_exact(mine, 1)[0])  # the security types
        mine.sendall(b"\x01")
        recv_exact(mine, 4)
        mine.sendall(b"\x01")
        head = recv_exact(mine, 24)
        recv_exact(mine, struct.unpack_from(">I", head, 20)[0])
        took["server_init"] = time.perf_counter() - t0
        width, height = struct.unpack_from(">HH", head)
        mine.sendall(
            set_pixel_format_32()
            + set_encodings([ZRLE])
            + struct.pack(">BBHHHH", 3, 0, 0, 0, width, height)
        )
        if recv_exact(mine, 1) != b"\0":
            raise RuntimeError("x11vnc's first message is not a FramebufferUpdate")
        for _ in range(struct.unpack(">xH", recv_exact(mine, 3))[0]):
            _x, _y, w, h, encoding = struct.unpack(">HHHHi", recv_exact(mine, 12))
            if encoding == ZRLE:
                recv_exact(mine, struct.unpack(">I", recv_exact(mine, 4))[0])
            elif encoding == 0:
                recv_exact(mine, w * h * 4)
        took["first_update"] = time.perf_counter() - t0
    finally:
        mine.close()  # the viewer goes: x11vnc -once ends by itself and frees its shared memory
        _end(proc)
    return {step: seconds * 1000 for step, seconds in took.items()}


def _end(proc: subprocess.Popen[bytes]) -> None:
    """As the agent ends it: its own exit, else SIGTERM, SIGKILL only as the last resort
    (a killed x11vnc leaves its ~40 MIT-SHM segments behind, and the system has 4,096)."""
    for stop in (None, proc.terminate, proc.kill):
        if stop is not None:
            stop()
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _medians(rounds: list[dict[str, float]], steps: tuple[str, ...]) -> dict[str, float | None]:
    def med(step: str) -> float | None:
        got = [r[step] for r in rounds if step in r]
        return round(statistics.median(got), 1) if got else None

    return {step: med(step) for step in steps}


def measure(rounds: int) -> dict[str, Any]:
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="allowhelp-firstpicture-") as tmp:
        root = Path(tmp)
        try:
            display = start_busy_screen(procs, root)
            engine: dict[str, list[dict[str, float]]] = {"said_ahead": [], "as_before": []}
            for i in range(rounds):
                order = ("said_ahead", "as_before") if i % 2 == 0 else ("as_before", "said_ahead")
                for name in order:
                    engine[name].append(engine_round(display, greet=name == "said_ahead"))
            log("firstpicture: engine rounds done")
            stack = Allowhelp.on_display(procs, root / "allowhelp", display)
            try:
                time.sleep(2)  # as bench.peers.run: the agent settles after connecting
                path = [asyncio.run(path_round(stack)) for _ in range(rounds)]
            finally:
                stack.close()
        finally:
            procs.close()
    return {
        "path_ms": _medians(path, PATH_STEPS),
        "engine_ms": {name: _medians(runs, ENGINE_STEPS) for name, runs in engine.items()},
        "per_round": {"path": path, "engine": engine},
        "rounds": rounds,
        "machine": machine(),
    }


def report(result: dict[str, Any]) -> str:
    path = result["path_ms"]
    rows, before = [], 0.0
    for step in PATH_STEPS:
        at = path.get(step)
        rows.append([step, fmt(at), "" if at is None else fmt(at - before)])
        before = at if at is not None else before
    lines = [f"Click to first picture, {result['rounds']} rounds, medians (ms)"]
    lines.append(table(["step", "at", "since the step before"], rows))
    engine = result["engine_ms"]
    lines.append("x11vnc alone on a socketpair (ms from spawn), interleaved")
    lines.append(
        table(
            ["variant", *ENGINE_STEPS],
            [[name, *(fmt(v.get(s)) for s in ENGINE_STEPS)] for name, v in engine.items()],
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.firstpicture", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "firstpicture.json"
    )
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be between 1 and 100")
    result = measure(args.rounds)
    print(report(result))
    dump_json(args.json, result)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
