"""``allowhelp-broker demo``: a whole installation on this machine, in one command.

A broker on embedded defaults (SQLite, self-made CA) plus a local agent
enrolled against it, started as a real ``allowhelp-agent`` process exactly as
on a user's PC. The admin password is new at every start and printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from allowhelp.broker.auth.passwords import hash_password
from allowhelp.broker.cli.admin import add_user, create_token, prepare
from allowhelp.broker.node.server import STORE_FILE, serve
from allowhelp.broker.settings import BrokerSettings, RuntimeInfo, parse_hostport
from allowhelp.broker.store import Store
from allowhelp.runtime import run_event_loop, tune_malloc

ADMIN = "admin"


def free_or_zero(hostport: str) -> str:
    """Keep the usual port when it is free; otherwise let the kernel pick one."""
    host, port = parse_hostport(hostport, "address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return f"{host}:0" if family == socket.AF_INET else f"[{host}]:0"
    return hostport


def reset_admin(data_dir: Path) -> str:
    password = secrets.token_urlsafe(12)
    prepare(data_dir)
    store = Store.open(data_dir / STORE_FILE)
    try:
        exists = store.user_by_name(ADMIN) is not None
        if exists:
            store.set_password(ADMIN, hash_password(password))
    finally:
        store.close()
    if not exists:
        add_user(data_dir, ADMIN, "admin", password, full_name="Demo Admin")
    return password


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "allowhelp.agent.cli", *args]


async def _wait_ready(data_dir: Path, serving: asyncio.Task[None]) -> RuntimeInfo:
    for _ in range(600):
        if serving.done():
            serving.result()
            raise RuntimeError("the broker stopped during start-up")
        with contextlib.suppress(ValueError):
            info = RuntimeInfo.read(data_dir)
            if info.pid == os.getpid():
                return info
        await asyncio.sleep(0.05)
    raise RuntimeError("the broker did not start within 30 s")


async def _demo(root: Path, https: str, tunnel: str) -> None:
    broker_dir, agent_dir = root / "broker", root / "agent"
    password = reset_admin(broker_dir)
    with contextlib.suppress(FileNotFoundError):
        (broker_dir / "broker.json").unlink()
    settings = BrokerSettings.build(
        broker_dir,
        https=free_or_zero(https),
        tunnel=free_or_zero(tunnel),
        organisation="allowhelp demo",
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(settings, stop=stop))
    info = await _wait_ready(broker_dir, serving)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not (agent_dir / "agent.json").exists():
        token = create_token(broker_dir, ttl="10m", uses=1)
        enrolling = await asyncio.create_subprocess_exec(
            *agent_command("enroll", token, "--config", str(agent_dir))
        )
        if await enrolling.wait() != 0:
            stop.set()
            await serving
            raise RuntimeError("the local agent could not enrol; see the message above")
    agent = await asyncio.create_subprocess_exec(*agent_command("run", "--config", str(agent_dir)))
    print(banner(info, password, broker_dir), flush=True)
    try:
        await serving
    finally:
        if agent.returncode is None:
            agent.terminate()
        await asyncio.wait_for(agent.wait(), 10)


def banner(info: RuntimeInfo, password: str, broker_dir: Path) -> str:
    return "\n".join(
        [
            "",
            "  allowhelp demo is running",
            f"  console:   {info.public_url}/",
            f"  log in as: {ADMIN}",
            f"  password:  {password}   (new at every demo start)",
            f"  the browser will warn about the self-made CA: {broker_dir / 'ca.pem'}",
            "  a local agent is enrolled and online; answer its consent prompts with",
            f"    allowhelp-agent pending --config {broker_dir.parent / 'agent'}",
            f"    allowhelp-agent allow SESSION_ID --config {broker_dir.parent / 'agent'}",
            "  press Ctrl-C to stop everything",
            "",
        ]
    )


def run_demo(data: Path | None, *, https: str, tunnel: str) -> int:
    root = (data or Path(".demo")).resolve()
    prepare(root)
    os.environ.setdefault("ALLOWHELP_CONFIG", str(root / "agent"))
    tune_malloc()
    run_event_loop(_demo(root, https, tunnel))
    return 0
