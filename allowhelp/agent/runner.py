"""``allowhelp-agent run``: the tunnel, the consent service and its front-ends together."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.frontends import choose_frontends, close_frontends
from allowhelp.agent.localsocket import LocalControlServer, socket_path
from allowhelp.agent.screen import screen_factory
from allowhelp.agent.service import AgentService
from allowhelp.agent.tunnel import AgentTunnel

log = logging.getLogger(__name__)


async def run_agent(folder: Path, *, reconnect_cap: float, prompt: str = "auto") -> None:
    config = AgentConfig.load(folder)
    service = AgentService(config)
    frontends = choose_frontends(service, prompt)
    service.frontends.extend(frontends)
    tunnel = AgentTunnel(service, folder, reconnect_cap=reconnect_cap, screen=screen_factory)
    control = LocalControlServer(service, socket_path(folder))
    await control.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent=%s running; control socket %s", config.agent_id, control.path)
    try:
        await tunnel.run_forever(stop)
    finally:
        service.end()
        await close_frontends(frontends)
        await control.close()
