# ruff: noqa: PLC0415 - the levers patch modules before the CLI imports them
"""Start the real broker or agent CLI, with the fd limit raised and optional lever experiments.

    python -m bench.launch [--uvloop] [--pktsize BYTES] broker|agent ARGS...

Without flags this is exactly ``allowhelp-broker ARGS`` / ``allowhelp-agent ARGS``
with a higher RLIMIT_NOFILE. The flags exist only to measure a proposed change
before the product adopts it; the headline figures never use them:

``--uvloop``     run the event loop on uvloop (``uvloop.install()`` before ``asyncio.run``).
``--pktsize N``  advertise N-byte SSH packets (and an 8*N window) on the tunnel's
                 channels instead of asyncssh's 32 KiB default.
``--no-uvloop``  hide uvloop (the broker then falls back to asyncio's loop), to
                 measure what uvloop costs or buys since 542e74c.
``--ws IMPL``    broker: uvicorn's WebSocket implementation (websockets,
                 websockets-sansio, wsproto) instead of the default ``auto``.
``--gc-threshold N``  ``gc.set_threshold(N, 50, 100)`` (default 700, 10, 10).
``--wstransport``  broker: the HTTPS route's tunnel on an asyncio transport over the
                 WebSocket instead of a socketpair (``bench/wstransport.py``).
``--no-screen-recording``  broker: screen sessions relayed without their recorder, the
                 baseline of ``bench.screenrec`` (the product always records).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.nofile import raise_nofile


def _patch_pktsize(size: int) -> None:
    import asyncssh

    from allowhelp.agent import tunnel as agent_tunnel
    from allowhelp.broker.tunnel import link as agentlink

    original_options = agent_tunnel.AgentTunnel._options

    def options(self: agent_tunnel.AgentTunnel) -> asyncssh.SSHServerConnectionOptions:
        opts = original_options(self)
        return asyncssh.SSHServerConnectionOptions(
            options=opts, max_pktsize=size, window=max(8 * size, 2 * 1024 * 1024)
        )

    agent_tunnel.AgentTunnel._options = options  # type: ignore[method-assign]

    original_open = agentlink.AgentLink.open_channel

    async def open_channel(self: agentlink.AgentLink, *args: Any, **kwargs: Any) -> Any:
        conn = self._conn
        create = conn.create_session

        async def create_session(*a: Any, **kw: Any) -> Any:
            kw.setdefault("max_pktsize", size)
            kw["window"] = max(kw.get("window", 0), 8 * size)
            return await create(*a, **kw)

        conn.create_session = create_session  # type: ignore[method-assign]
        try:
            return await original_open(self, *args, **kwargs)
        finally:
            del conn.create_session

    agentlink.AgentLink.open_channel = open_channel  # type: ignore[method-assign]


def _patch_ws(impl: str) -> None:
    import uvicorn

    original = uvicorn.Config.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["ws"] = impl
        original(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]


def _patch_no_screen_recording() -> None:
    from starlette.websockets import WebSocket

    from allowhelp.broker.console.api import session_sockets
    from allowhelp.broker.console.services import Services
    from allowhelp.broker.model.session import Session
    from allowhelp.broker.relay.outcome import Relay
    from allowhelp.broker.relay.screen import ScreenRelay

    def unrecorded(websocket: WebSocket, svc: Services, session: Session) -> Relay:
        return ScreenRelay(websocket, None, view_only=session.view_only, sender=session.technician)

    session_sockets._screen_relay = unrecorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launch")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--pktsize", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--ws", default="")
    parser.add_argument("--gc-threshold", type=int, default=0)
    parser.add_argument("--wstransport", action="store_true")
    parser.add_argument("--no-screen-recording", action="store_true")
    parser.add_argument("program", choices=["broker", "agent"])
    args, rest = parser.parse_known_args(argv)
    raise_nofile()
    if args.no_uvloop:
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # `import uvloop` now fails
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.pktsize:
        _patch_pktsize(args.pktsize)
    if args.ws and args.program == "broker":
        _patch_ws(args.ws)
    if args.gc_threshold:
        import gc

        gc.set_threshold(args.gc_threshold, 50, 100)
    if args.wstransport and args.program == "broker":
        from bench import wstransport

        wstransport.install()
    if args.no_screen_recording and args.program == "broker":
        _patch_no_screen_recording()
    if args.program == "broker":
        from allowhelp.broker.cli.main import main as broker_main

        return broker_main(rest)
    from allowhelp.agent.cli import main as agent_main

    return agent_main(rest)


if __name__ == "__main__":
    sys.exit(main())
