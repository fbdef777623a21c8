"""``allowhelp-agent run``: the tunnel, the consent service and its front-ends together.

Each command imports at start only what it runs while idle: the modules of a
session (the screen engines, sftp-server, the shell's PTY) load with the first
session that needs them, those of the machine service (the helper socket, fleet
jobs, the inventory) only in ``run --system``. An idle agent's memory is mostly
the code it imported (docs/benchmarks.md, "Agent RSS");
``tests/house/test_idle_imports.py`` keeps it so.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.hello import current_hello, os_description
from allowhelp.agent.helpcodes import AskedHelp
from allowhelp.agent.service import AgentService
from allowhelp.agent.tunnel import AgentTunnel
from allowhelp.agent.woken import WokenFiles, linger_task

if TYPE_CHECKING:
    from allowhelp.agent.channels import Backend, GatedChannel
    from allowhelp.agent.consent import Grant, Pending

log = logging.getLogger(__name__)
SCREEN_MODULE = "allowhelp.agent.screen"


async def run_agent(
    folder: Path, *, reconnect_cap: float, prompt: str = "auto", linger: float | None = None
) -> None:
    # the per-user agent's own parts; the machine service never loads them
    from allowhelp.agent.frontends import choose_frontends, close_frontends  # noqa: PLC0415
    from allowhelp.agent.localpath import inherited_listener, socket_path  # noqa: PLC0415
    from allowhelp.agent.localsocket import LocalControlServer  # noqa: PLC0415

    config = AgentConfig.load(folder)
    # its Hello names its folder (keys): no files session may reach it (hello.py)
    service = AgentService(config, hello=lambda: current_hello(folder))
    if linger is not None:
        service.doorbell = WokenFiles(folder, config.agent_id)
    frontends = choose_frontends(service, prompt)
    service.frontends.extend(frontends)
    service.frontends.append(ScreenWarmup())
    tunnel = AgentTunnel(service, folder, reconnect_cap=reconnect_cap, screen=_screen, files=_files)
    control = LocalControlServer(service, socket_path(folder), inherited_listener("local"))
    await control.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent=%s running; control socket %s", config.agent_id, control.path)
    lingering = linger_task(
        linger,
        stop,
        lambda: service_needed(service) or control.clients > 0,
        lambda: tunnel.state.connected,
    )
    try:
        await tunnel.run_forever(stop)
    finally:
        if lingering is not None:
            lingering.cancel()
        service.end()
        await close_frontends(frontends)
        await control.close()


class ScreenWarmup:
    """A front-end that shows nothing: on a screen prompt it loads the screen's code
    while the person reads the prompt, so the first screen of the agent's life does
    not pay that import (about 25 ms) after the Allow. Code only: nothing is started
    and nothing captured before the Allow (x11vnc starts when the channel opens)."""

    def prompt(self, pending: Pending) -> None:
        if pending.request.kind == "screen" and SCREEN_MODULE not in sys.modules:
            asyncio.get_running_loop().call_soon(_load_screen)  # after the prompt is shown

    def prompt_closed(self, session_id: str) -> None:
        """Nothing shown, nothing to close."""

    def active(self, grant: Grant) -> None:
        """Nothing to show."""

    def ended(self, session_id: str) -> None:
        """Nothing to show."""


def _load_screen() -> None:
    importlib.import_module(SCREEN_MODULE)


def _screen(channel: GatedChannel, grant: Grant) -> Backend:
    """The per-user agent's screen for a grant (``screen.screen_factory``)."""
    from allowhelp.agent.screen import screen_factory  # noqa: PLC0415 - with the first screen

    return screen_factory(channel, grant)


def _files(channel: GatedChannel, grant: Grant) -> Backend:
    """The per-user agent's sftp-server for a grant (``files.files_factory``)."""
    from allowhelp.agent.files import files_factory  # noqa: PLC0415 - with the first files

    return files_factory(channel, grant)


def service_needed(service: AgentService) -> bool:
    """Somebody is being helped or waits for a help code; or the doorbell has no key
    (the broker sends one right after the Hello; one that never does, an older
    broker, keeps the full agent running as in tunnel mode)."""
    if service.busy() or service.help_waiting:
        return True
    return service.doorbell is not None and not service.doorbell.has_key


async def run_machine(folder: Path, *, reconnect_cap: float, linger: float | None = None) -> None:
    """``run --system``: the tunnel, the gate and the helper socket; no prompts of
    its own (the session helpers show them) and nothing started as a user."""
    # the machine service's own parts; the per-user agent never loads them
    from allowhelp.agent.history import HISTORY_FILE, History, SessionHistory  # noqa: PLC0415
    from allowhelp.agent.inventory import InventoryReporter  # noqa: PLC0415
    from allowhelp.agent.jobs import JobKeeper  # noqa: PLC0415
    from allowhelp.agent.machine import HelperHub  # noqa: PLC0415
    from allowhelp.agent.machinesocket import machine_socket  # noqa: PLC0415
    from allowhelp.agent.signedin import default_active_uid  # noqa: PLC0415
    from allowhelp.agent.upgrade import UpgradeWatch, clear_mark  # noqa: PLC0415

    config = AgentConfig.load(folder)
    if linger is None:  # woken by the doorbell, the mark is the doorbell's to spend
        clear_mark(folder)  # this process runs the installed version
    hub = HelperHub(
        machine_socket(folder),
        active_uid=default_active_uid(),
        hostname=socket.gethostname(),
        os_name=os_description(),
    )
    service = AgentService(config, signed_in=hub.signed_in, hello=hub.hello)
    service.asked_help = AskedHelp(folder)  # kept for the next agent (helpcodes.py)
    if linger is not None:
        service.doorbell = WokenFiles(folder, config.agent_id)
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
    # woken by the doorbell: it ends when idle (the next start runs a new version)
    upgrade = None if linger is not None else UpgradeWatch(folder, service.busy).run(stop)
    watch = asyncio.create_task(upgrade) if upgrade is not None else None
    lingering = linger_task(
        linger,
        stop,
        lambda: service_needed(service) or hub.clients > 0,
        lambda: tunnel.state.connected,
    )
    try:
        await tunnel.run_forever(stop)
    finally:
        for task in (watch, lingering):
            if task is not None:
                task.cancel()
        service.end()
        await service.jobs.close()
        await hub.close()
