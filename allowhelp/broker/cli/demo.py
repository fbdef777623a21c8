"""``allowhelp-broker demo``: a whole installation on this machine, in one command.

A broker on embedded defaults (SQLite, self-made CA) plus a local agent
enrolled against it, started as a real ``allowhelp-agent`` process exactly as
on a user's PC. The admin password is new at every start and printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
from pathlib import Path

from allowhelp.broker.auth.passwords import hash_password
from allowhelp.broker.cli.admin import add_user, create_token, prepare
from allowhelp.broker.cli.demo_ports import choose, remember
from allowhelp.broker.errors import BrokerError
from allowhelp.broker.node.datafolder import STORE_FILE
from allowhelp.broker.node.server import serve
from allowhelp.broker.settings import BrokerSettings, RuntimeInfo, parse_hostport
from allowhelp.broker.store import Store
from allowhelp.runtime import run_event_loop, tune_malloc

ADMIN = "admin"
MODULES = {
    "allowhelp-agent": "allowhelp.agent.cli",
    "allowhelp-broker": "allowhelp.broker.cli.main",
}


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


def shown_path(path: Path) -> str:
    """``path`` as typed from the current folder: relative inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def shown_command(program: str, *args: str) -> str:
    """A command line that runs as printed, from the folder the demo started in:
    this environment's own console script (``.venv/bin/...`` is on no PATH)."""
    script = Path(sys.executable).with_name(program)
    if os.access(script, os.X_OK):
        head = [shown_path(script)]
    else:
        module = (
            "allowhelp.agent.cli" if program == "allowhelp-agent" else "allowhelp.broker.cli.main"
        )
        head = [shown_path(Path(sys.executable)), "-m", module]
    return shlex.join([*head, *args])


def pinned_elsewhere(agent_dir: Path, info: RuntimeInfo) -> bool:
    """Whether the demo's agent was enrolled against a tunnel port the broker no longer has."""
    try:
        pinned = json.loads((agent_dir / "agent.json").read_text())["tunnel_port"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(pinned != parse_hostport(info.tunnel_public, "tunnel")[1])


async def _wait_ready(data_dir: Path, serving: asyncio.Task[None]) -> RuntimeInfo:
    for _ in range(600):
        if serving.done():
            serving.result()
            raise BrokerError("the broker stopped during start-up")
        with contextlib.suppress(ValueError):
            info = RuntimeInfo.read(data_dir)
            if info.pid == os.getpid():
                return info
        await asyncio.sleep(0.05)
    raise BrokerError("the broker did not start within 30 s")


async def _wait_agent(agent_dir: Path, agent: asyncio.subprocess.Process) -> None:
    """Until the agent answers on its control socket, as the printed commands need."""
    for _ in range(150):
        if agent.returncode is not None:
            raise BrokerError("the local agent stopped; see the message above")
        asking = await asyncio.create_subprocess_exec(
            *agent_command("pending", "--json", "--config", str(agent_dir)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        if await asking.wait() == 0:
            return
        await asyncio.sleep(0.2)
    raise BrokerError("the local agent did not start within 30 s")


async def _demo(root: Path, https: str | None, tunnel: str | None) -> None:
    broker_dir, agent_dir = root / "broker", root / "agent"
    addresses = choose(root, https=https, tunnel=tunnel)
    password = reset_admin(broker_dir)
    with contextlib.suppress(FileNotFoundError):
        (broker_dir / "broker.json").unlink()
    settings = BrokerSettings.build(
        broker_dir,
        https=addresses.https,
        tunnel=addresses.tunnel,
        organisation="allowhelp demo",
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(settings, stop=stop))
    info = await _wait_ready(broker_dir, serving)
    remember(root, info)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if pinned_elsewhere(agent_dir, info):
        print("the demo's agent dialled another tunnel port: enrolling it anew", flush=True)
        shutil.rmtree(agent_dir)
    if not (agent_dir / "agent.json").exists():
        token = create_token(broker_dir, ttl="10m", uses=1)
        enrolling = await asyncio.create_subprocess_exec(
            *agent_command("enroll", token, "--config", str(agent_dir))
        )
        if await enrolling.wait() != 0:
            stop.set()
            await serving
            raise BrokerError("the local agent could not enrol; see the message above")
    agent = await asyncio.create_subprocess_exec(*agent_command("run", "--config", str(agent_dir)))
    try:
        try:
            await _wait_agent(agent_dir, agent)
        except BrokerError:
            stop.set()
            await serving
            raise
        print(banner(info, password, broker_dir), flush=True)
        await serving
    finally:
        if agent.returncode is None:
            agent.terminate()
        await asyncio.wait_for(agent.wait(), 10)


def banner(info: RuntimeInfo, password: str, broker_dir: Path) -> str:
    agent = shown_path(broker_dir.parent / "agent")
    token = shown_command("allowhelp-broker", "token", "create", "--data", shown_path(broker_dir))
    return "\n".join(
        [
            "",
            "  allowhelp demo is running (the same ports at every start)",
            f"  console:   {info.public_url}/",
            f"  log in as: {ADMIN}",
            f"  password:  {password}   (new at every demo start)",
            f"  the browser will warn about the self-made CA: {shown_path(broker_dir / 'ca.pem')}",
            "  a local agent is enrolled and online; answer its consent prompts with",
            f"    {shown_command('allowhelp-agent', 'pending', '--config', agent)}",
            f"    {shown_command('allowhelp-agent', 'allow', 'SESSION_ID', '--config', agent)}",
            "  a new enrolment token, for another agent on this machine:",
            f"    {token}",
            "  press Ctrl-C to stop everything",
            "",
        ]
    )


def run_demo(data: Path | None, *, https: str | None, tunnel: str | None) -> int:
    root = (data or Path(".demo")).resolve()
    prepare(root)
    os.environ.setdefault("ALLOWHELP_CONFIG", str(root / "agent"))
    tune_malloc()
    run_event_loop(_demo(root, https, tunnel))
    return 0
