"""allowhelp's side of the peers bench: the console's terminal and screen sockets, and memory.

The stack is :class:`bench.screen.Allowhelp` (a real broker and agent, the agent
on the bench's X display); a keystroke goes through the console's terminal
WebSocket (``bench.latency``), bulk through the same socket with the PTY raw
(``bench.throughput``), the screen through ``/sessions/{id}/screen`` with the
RFB client of ``bench.screen`` (ZRLE, which noVNC decodes), its zlib stream
inflated as a viewer does.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets

from allowhelp.agent import localsocket
from allowhelp.agent.machineclient import machine_call
from allowhelp.agent.machinesocket import machine_socket
from bench import fleet
from bench.common import Procs, children, log, proc_stat, wait_for
from bench.screen import (
    Allowhelp,
    Init,
    RfbStream,
    handshake,
    set_encodings,
    set_pixel_format_32,
    update_request,
)
from bench.throughput import raw_terminal

ZRLE = 16


@dataclass
class ScreenRun:
    first_picture_s: float
    consent_s: float  # of which: request until the session is active (the Allow click included)
    updates: int
    seconds: float
    bytes: int

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds


class Inflating:
    """One FramebufferUpdate at a time, each ZRLE rectangle's zlib data inflated
    (one zlib stream per connection, as RFB says): (rectangles, pixels)."""

    def __init__(self, rfb: RfbStream, init: Init) -> None:
        self.rfb, self.init = rfb, init
        self.zlib = zlib.decompressobj()

    async def update(self) -> tuple[int, int]:
        rfb = self.rfb
        while (kind := (await rfb.read(1))[0]) != 0:
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                await rfb.skip(struct.unpack(">3xI", await rfb.read(7))[0])
                continue
            raise RuntimeError(f"unexpected server message type {kind}")
        count = struct.unpack(">xH", await rfb.read(3))[0]
        pixels = 0
        for _ in range(count):
            _x, _y, w, h, encoding = struct.unpack(">HHHHi", await rfb.read(12))
            if encoding == ZRLE:
                data = await rfb.read(struct.unpack(">I", await rfb.read(4))[0])
                self.zlib.decompress(data)
            elif encoding == 0:
                await rfb.skip(w * h * 4)
            elif encoding == -223:  # DesktopSize
                self.init.width, self.init.height = w, h
            else:
                raise RuntimeError(f"unexpected rectangle encoding {encoding}")
            pixels += w * h
        return count, pixels


def _agent_call(stack: Allowhelp, request: dict[str, Any]) -> dict[str, Any]:
    """What ``allowhelp-agent pending|allow --config`` sends, without starting a process."""
    folder = stack.agent.config
    if machine_socket(folder).exists():
        return machine_call(machine_socket(folder), request)
    return localsocket.call(folder, request)


def proxied_client(stack: Allowhelp, port: int) -> httpx.Client:
    """The technician's logged-in client, through 127.0.0.1:``port`` (the branch proxy)."""
    desk = stack.desk.client
    return httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        verify=stack.broker.ssl_context(),
        headers={**desk.headers, "Cookie": stack.desk.cookie_header()},
        timeout=60,
    )


def consented_screen(stack: Allowhelp, client: httpx.Client | None = None) -> str:
    """Ask for the screen and allow it at once, as a person's click would: the agent's
    own local socket (the CLI's request), polled every 5 ms, instead of two CLI
    processes (0.2-0.3 s of Python start-up each, which no person's click costs).
    ``client``: the technician's HTTP client (default: the stack's, on the LAN)."""
    desk = client or stack.desk.client
    answer = desk.post(
        "/api/v1/sessions",
        json={"agent_id": stack.agent.agent_id, "kind": "screen", "reason": "peers bench"},
    )
    if answer.status_code != 201:
        raise RuntimeError(f"session request failed: {answer.status_code} {answer.text}")
    session_id = str(answer.json()["id"])

    def asked() -> bool:
        pending = _agent_call(stack, {"op": "pending"})["pending"]
        return any(p["session_id"] == session_id for p in pending)

    wait_for(asked, 20, "the consent prompt", step=0.005)
    _agent_call(stack, {"op": "allow", "session_id": session_id})
    wait_for(
        lambda: desk.get(f"/api/v1/sessions/{session_id}").json()["state"] == "active",
        20,
        "the session to be active",
        step=0.005,
    )
    return session_id


async def screen_run(
    stack: Allowhelp, warmup: float, seconds: float, via: int | None = None
) -> ScreenRun:
    """From the technician's request (the click) to the first decoded picture, then
    updates for ``seconds`` after ``warmup``, as noVNC asks for them. ``via``: the
    technician's side (API and screen socket) through 127.0.0.1:``via``."""
    client = proxied_client(stack, via) if via is not None else None
    t0 = time.perf_counter()
    try:
        session_id = await asyncio.to_thread(consented_screen, stack, client)
    finally:
        if client is not None:
            client.close()
    active = time.perf_counter()
    ws_args = stack.ws_args(session_id, channel="screen")
    if via is not None:
        ws_args["uri"] = ws_args["uri"].replace(stack.broker.url.split("//")[1], f"127.0.0.1:{via}")
    try:
        async with websockets.connect(
            subprotocols=["binary"],  # type: ignore[list-item]
            compression=None,
            max_size=None,
            **ws_args,
        ) as ws:
            rfb = RfbStream(ws)
            init = await handshake(rfb)
            await rfb.send(set_pixel_format_32() + set_encodings([ZRLE]))
            await rfb.send(update_request(init, incremental=False))
            reader = Inflating(rfb, init)
            await reader.update()
            first = time.perf_counter() - t0
            until = time.perf_counter() + warmup
            while time.perf_counter() < until:
                await rfb.send(update_request(init, incremental=True))
                await reader.update()
            updates, start_bytes = 0, rfb.received - len(rfb.buf)
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < seconds:
                await rfb.send(update_request(init, incremental=True))
                _, pixels = await reader.update()
                updates += pixels > 0
            took = time.perf_counter() - t1
            got = rfb.received - len(rfb.buf) - start_bytes
    finally:
        await asyncio.to_thread(stack.end, session_id)
    await asyncio.to_thread(stack.wait_ended, session_id)
    return ScreenRun(first, active - t0, updates, took, got)


async def bulk_download(stack: Allowhelp, size: int) -> float:
    """MB/s of ``size`` bytes from the PC's raw PTY to the technician."""
    session_id = await asyncio.to_thread(stack.consented_shell, "peers bulk")
    try:
        async with raw_terminal(stack, session_id) as pipe:
            return size / await pipe.download(size) / 1e6
    finally:
        await asyncio.to_thread(stack.end, session_id)


def agent_rss_mb(stack: Allowhelp) -> float:
    """The idle agent's RSS. In doorbell mode (``--idle doorbell``, as the peers run
    starts it) that is the doorbell process, once the full agent it woke has exited
    after its linger: what stays resident on a PC nobody is helping."""
    proc = stack.agent.proc
    if proc is None:
        raise RuntimeError("the agent is not running")
    if stack.agent.idle == "doorbell":
        wait_for(
            lambda: not children(proc.pid),
            stack.agent.linger + 30,
            "the woken agent to exit after its linger",
            step=0.2,
        )
        time.sleep(2)  # as the tunnel mode's reading: settled
    return proc_stat(proc.pid).rss_kib / 1024


def server_kib_per_agent(procs: Procs, root: Path, count: int, settle_s: float) -> dict[str, Any]:
    """A fresh broker, ``count`` agents of ``bench.fleet_worker`` (the product's own tunnel
    and service per agent, many per process); broker RSS after ``settle_s`` idle, less
    its RSS before the fill, per agent. Python frees by reference counting: no GC to force."""
    reading: dict[str, float] = {}

    def settled(pid: int) -> None:
        log(f"allowhelp: {count} agents online, settling {settle_s:g} s")
        time.sleep(settle_s)
        reading["rss_kib"] = proc_stat(pid).rss_kib

    result = fleet.one_size(procs, root, count, quick=True, levers=None, on_filled=settled)
    if result.get("fill_seconds") is None:
        raise RuntimeError(f"not all {count} allowhelp agents came online")
    per_agent = (reading["rss_kib"] - result["broker_rss_idle_kib"]) / count
    return {"kib_per_agent": per_agent, "agents": count, "fill_s": result["fill_seconds"]}
