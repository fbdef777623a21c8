"""``allowhelp-agent run``: the tunnel, the consent service and its front-ends together."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.enrol import os_description
from allowhelp.agent.files import files_factory
from allowhelp.agent.frontends import choose_frontends, close_frontends
from allowhelp.agent.history import HISTORY_FILE, History, SessionHistory
from allowhelp.agent.inventory import InventoryReporter
from allowhelp.agent.jobs import JobKeeper
from allowhelp.agent.localsocket import LocalControlServer, socket_path
from allowhelp.agent.machine import HelperHub, machine_socket
from allowhelp.agent.screen import screen_factory
from allowhelp.agent.service import AgentService
from allowhelp.agent.signedin import default_active_uid
from allowhelp.agent.tunnel import AgentTunnel

log = logging.getLogger(__name__)


async def run_agent(folder: Path, *, reconnect_cap: float, prompt: str = "auto") -> None:
    config = AgentConfig.load(folder)
    service = AgentService(config)
    frontends = choose_frontends(service, prompt)
    service.frontends.extend(frontends)
    tunnel = AgentTunnel(
        service, folder, reconnect_cap=reconnect_cap, screen=screen_factory, files=files_factory
    )
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


async def run_machine(folder: Path, *, reconnect_cap: float) -> None:
    """``run --system``: the tunnel, the gate and the helper socket; no prompts of
    its own (the session helpers show them) and nothing started as a user."""
    config = AgentConfig.load(folder)
    hub = HelperHub(
        machine_socket(folder),
        active_uid=default_active_uid(),
        hostname=socket.gethostname(),
        os_name=os_description(),
    )
    service = AgentService(config, signed_in=hub.signed_in, hello=hub.hello)
    hub.service = service
    history = History(folder / HISTORY_FILE)
    service.frontends.extend([hub, SessionHistory(history)])
    service.jobs = JobKeeper(
        folder,
        agent_id=config.agent_id,
        broker_key=config.broker_tunnel_key,
        history=history,
        notify=hub.notify,
    )
    service.inventory = InventoryReporter()
    service.news.listeners.append(hub.news)  # chat and transfers to the owner's window
    tunnel = AgentTunnel(
        service,
        folder,
        reconnect_cap=reconnect_cap,
        screen=hub.screen,
        shell=hub.shell,
        files=hub.files,
    )
    await hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent=%s machine service running; helper socket %s", config.agent_id, hub.path)
    try:
        await tunnel.run_forever(stop)
    finally:
        service.end()
        await service.jobs.close()
        await hub.close()
