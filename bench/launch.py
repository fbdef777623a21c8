# ruff: noqa: PLC0415 - the levers patch modules before the CLI imports them
"""Start the real broker or agent CLI, with the fd limit raised and optional lever experiments.

    python -m bench.launch [--uvloop] [--pktsize BYTES] broker|agent ARGS...

Without flags this is exactly ``allowhelp-broker ARGS`` / ``allowhelp-agent ARGS``
with a higher RLIMIT_NOFILE. The flags exist only to measure a proposed change
before the product adopts it; the headline figures never use them:

``--uvloop``     run the event loop on uvloop (``uvloop.install()`` before ``asyncio.run``).
``--pktsize N``  advertise N-byte SSH packets (and an 8*N window) on the tunnel's
                 channels instead of asyncssh's 32 KiB default.
``--maxstartups K``  broker: at most K tunnel handshakes in flight; a connection
                 beyond that is closed at once (OpenSSH's MaxStartups idea), so the
                 agent backs off instead of every handshake timing out together.
``--acceptgate K``  broker: stop *accepting* tunnel connections while K handshakes
                 are in flight (the listen backlog is K too), resume below K/2: the
                 excess waits in the kernel at no CPU cost. Uses asyncio internals
                 (``loop._start_serving``); a product version would own its socket.
``--acceptwait``  broker (the ``_accept_loop`` listener, since a8173dd): when
                 ``MAX_STARTUPS`` handshakes are in flight, wait for a free slot
                 before the next ``accept()`` instead of accepting and closing: the
                 excess waits in the kernel's backlog and SYN retries, and agents
                 do not fail, so they do not back off.
``--no-uvloop``  hide uvloop (the broker then falls back to asyncio's loop), to
                 measure what uvloop costs or buys since 542e74c.
``--ws IMPL``    broker: uvicorn's WebSocket implementation (websockets,
                 websockets-sansio, wsproto) instead of the default ``auto``.
``--gc-threshold N``  ``gc.set_threshold(N, 50, 100)`` (default 700, 10, 10).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.common import raise_nofile


def _patch_pktsize(size: int) -> None:
    import asyncssh

    from allowhelp.agent import tunnel as agent_tunnel
    from allowhelp.broker import agentlink

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


def _patch_maxstartups(limit: int) -> None:
    import asyncio

    from allowhelp.broker import tunnel

    _needs_listen_reverse()

    state = {"inflight": 0, "refused": 0}
    made = tunnel.AgentConnection.connection_made
    lost = tunnel.AgentConnection.connection_lost

    def connection_made(self: Any, conn: Any) -> None:
        made(self, conn)
        if state["inflight"] >= limit:
            state["refused"] += 1
            self._bench_counted = False
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        state["inflight"] += 1
        self._bench_counted = True

    def _done(self: Any) -> None:
        if getattr(self, "_bench_counted", False):
            self._bench_counted = False
            state["inflight"] -= 1

    def auth_completed(self: Any) -> None:
        _done(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _done(self)
        lost(self, exc)

    tunnel.AgentConnection.connection_made = connection_made  # type: ignore[method-assign]
    tunnel.AgentConnection.auth_completed = auth_completed  # type: ignore[method-assign]
    tunnel.AgentConnection.connection_lost = connection_lost  # type: ignore[method-assign]


def _patch_acceptgate(limit: int) -> None:
    import asyncio

    import asyncssh

    from allowhelp.broker import tunnel

    _needs_listen_reverse()

    state: dict[str, Any] = {"inflight": 0, "paused": False, "server": None}
    listen = asyncssh.listen_reverse

    async def listen_reverse(*args: Any, **kwargs: Any) -> Any:
        kwargs["backlog"] = limit
        acceptor = await listen(*args, **kwargs)
        state["server"] = acceptor._server
        return acceptor

    asyncssh.listen_reverse = listen_reverse

    def pause() -> None:
        server = state["server"]
        if server is None or state["paused"]:
            return
        loop = asyncio.get_running_loop()
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        state["paused"] = True

    def resume() -> None:
        server = state["server"]
        if server is None or not state["paused"]:
            return
        loop: Any = asyncio.get_running_loop()
        for sock in server.sockets:
            loop._start_serving(server._protocol_factory, sock._sock, None, server, server._backlog)
        state["paused"] = False

    made = tunnel.AgentConnection.connection_made
    lost = tunnel.AgentConnection.connection_lost

    def connection_made(self: Any, conn: Any) -> None:
        made(self, conn)
        state["inflight"] += 1
        self._bench_counted = True
        if state["inflight"] >= limit:
            pause()

    def _done(self: Any) -> None:
        if getattr(self, "_bench_counted", False):
            self._bench_counted = False
            state["inflight"] -= 1
            if state["inflight"] < limit // 2:
                resume()

    def auth_completed(self: Any) -> None:
        _done(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _done(self)
        lost(self, exc)

    tunnel.AgentConnection.connection_made = connection_made  # type: ignore[method-assign]
    tunnel.AgentConnection.auth_completed = auth_completed  # type: ignore[method-assign]
    tunnel.AgentConnection.connection_lost = connection_lost  # type: ignore[method-assign]


def _needs_listen_reverse() -> None:
    from allowhelp.broker import tunnel

    if hasattr(tunnel.TunnelListener, "_accept_loop"):
        raise SystemExit(
            "this lever patches the listen_reverse listener (before a8173dd); the broker now"
            " has its own accept loop and admission control: use --acceptwait"
        )


def _patch_acceptwait() -> None:
    import asyncio
    import socket

    from allowhelp.broker import tunnel

    if not hasattr(tunnel.TunnelListener, "_accept_loop"):
        raise SystemExit("--acceptwait needs the broker's own accept loop (a8173dd or later)")

    slot: dict[str, asyncio.Event] = {}
    done = tunnel.TunnelListener._done

    def _done(self: Any, address: str) -> None:
        done(self, address)
        if "free" in slot:
            slot["free"].set()

    async def _accept_loop(self: Any, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        free = slot.setdefault("free", asyncio.Event())
        while True:
            while sum(self._starting.values()) >= tunnel.MAX_STARTUPS:
                free.clear()
                await free.wait()
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            address = str(peer[0])
            if not self._admit(address):
                self.dropped += 1
                sock.close()
                continue
            self._spawn(self._handshake(sock, address))

    tunnel.TunnelListener._done = _done  # type: ignore[method-assign]
    tunnel.TunnelListener._accept_loop = _accept_loop  # type: ignore[method-assign]


def _patch_ws(impl: str) -> None:
    import uvicorn

    original = uvicorn.Config.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["ws"] = impl
        original(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launch")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--pktsize", type=int, default=0)
    parser.add_argument("--maxstartups", type=int, default=0)
    parser.add_argument("--acceptgate", type=int, default=0)
    parser.add_argument("--acceptwait", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--ws", default="")
    parser.add_argument("--gc-threshold", type=int, default=0)
    parser.add_argument("program", choices=["broker", "agent"])
    args, rest = parser.parse_known_args(argv)
    raise_nofile()
    if args.no_uvloop:
        sys.modules["uvloop"] = None  # type: ignore[assignment] - `import uvloop` now fails
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.pktsize:
        _patch_pktsize(args.pktsize)
    if args.maxstartups and args.program == "broker":
        _patch_maxstartups(args.maxstartups)
    if args.acceptgate and args.program == "broker":
        _patch_acceptgate(args.acceptgate)
    if args.acceptwait and args.program == "broker":
        _patch_acceptwait()
    if args.ws and args.program == "broker":
        _patch_ws(args.ws)
    if args.gc_threshold:
        import gc

        gc.set_threshold(args.gc_threshold, 50, 100)
    if args.program == "broker":
        from allowhelp.broker.cli import main as broker_main

        return broker_main(rest)
    from allowhelp.agent.cli import main as agent_main

    return agent_main(rest)


if __name__ == "__main__":
    sys.exit(main())
