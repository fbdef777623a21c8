"""Real broker and agent processes on 127.0.0.1 for integration tests.

Everything here starts the same console scripts an operator runs, on port 0,
and waits on observable facts (a file written, an API answer) with bounded
deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import select
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PY = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_cli(
    module: str,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def broker_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("allowhelp.broker.cli.main", *args, stdin=stdin)


def exported(*where: str) -> list[dict[str, Any]]:
    """The chain as ``audit export`` writes it: ``where`` is ``--data DIR`` or ``--store URL``."""
    done = broker_cli("audit", "export", *where)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def agent_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("allowhelp.agent.cli", *args, stdin=stdin)


@dataclass
class Broker:
    data: Path
    https: str = "127.0.0.1:0"
    tunnel: str = "127.0.0.1:0"
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # How `allowhelp-broker` is run: this checkout's, unless a test installs another.
    program: list[str] = field(default_factory=lambda: [PY, "-m", "allowhelp.broker.cli.main"])
    cwd: Path | None = None
    store: str | None = None  # --store: a PostgreSQL URL shared by nodes (tests/multinode)

    @property
    def store_args(self) -> list[str]:
        return ["--store", self.store] if self.store else []

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def start(self, timeout: float = 30) -> Broker:
        runtime = self.data / "broker.json"
        runtime.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.program,
                    "serve",
                    "--data",
                    str(self.data),
                    "--https",
                    self.https,
                    "--tunnel",
                    self.tunnel,
                    *self.store_args,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )

        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:
                info: dict[str, Any] = json.loads(runtime.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.proc.pid else None

        self.info = wait_for(ready, timeout, "the broker to listen")
        # Restarts keep the same addresses, as a real broker would.
        self.https, self.tunnel = self.info["https"], self.info["tunnel"]
        return self

    @property
    def url(self) -> str:
        return str(self.info["public_url"])

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data / "ca.pem"))

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.ssl_context(), timeout=20, **kwargs)

    def sync_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=20)

    def add_user(self, name: str, password: str, role: str = "technician") -> None:
        done = broker_cli(
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--data",
            str(self.data),
            *self.store_args,
            stdin=password + "\n",
        )
        assert done.returncode == 0, done.stderr

    def token(self, *args: str) -> str:
        done = broker_cli("token", "create", "--data", str(self.data), *self.store_args, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def audit_records(self, target: str | None = None) -> list[dict[str, Any]]:
        """The chain as ``audit export`` writes it (of one ``target``, when given)."""
        records = exported("--data", str(self.data))
        return [r for r in records if target is None or r["target"] == target]

    def agents(self, user: str, password: str) -> list[dict[str, Any]]:
        with self.sync_client() as client:
            assert (
                client.post(
                    "/api/v1/login", json={"username": user, "password": password}
                ).status_code
                == 200
            )
            answer: list[dict[str, Any]] = client.get("/api/v1/agents").json()
            return answer

    def audit_types(self) -> list[str]:
        where = self.store_args or ["--data", str(self.data)]
        return [record["type"] for record in exported(*where)]


@dataclass
class Agent:
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    program: list[str] = field(default_factory=lambda: [PY, "-m", "allowhelp.agent.cli"])

    @property
    def log(self) -> Path:
        return self.config.parent / f"{self.config.name}.log"

    def enroll(self, token: str) -> subprocess.CompletedProcess[str]:
        return agent_cli("enroll", token, "--config", str(self.config))

    @property
    def agent_id(self) -> str:
        return str(json.loads((self.config / "agent.json").read_text())["agent_id"])

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Agent:
        """``env`` replaces the environment (e.g. a test display) when given."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.program, "run", "--config", str(self.config), *extra],
                stdin=subprocess.DEVNULL,  # never a terminal prompt on the developer's tty
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Fleet:
    """Owns every process a test starts, so each is stopped whatever the outcome."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.brokers: list[Broker] = []
        self.agents: list[Agent] = []

    def broker(self, name: str = "broker", **kwargs: Any) -> Broker:
        broker = Broker(self.root / name, **kwargs)
        self.brokers.append(broker)
        return broker

    def agent(self, name: str = "agent") -> Agent:
        agent = Agent(self.root / name)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        for broker in self.brokers:
            broker.kill()


ADMIN, ADMIN_PW = "root-admin", "admin password 123"
TECH, TECH_PW = "alice", "alice password 123"


def online(broker: Broker, agent_id: str) -> bool:
    return any(a["id"] == agent_id and a["online"] for a in broker.agents(ADMIN, ADMIN_PW))


def agent_call(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return agent_cli(*args, "--config", str(agent.config))


def pending(agent: Agent) -> list[dict[str, Any]]:
    done = agent_call(agent, "pending", "--json")
    assert done.returncode == 0, done.stderr
    answer: list[dict[str, Any]] = json.loads(done.stdout)
    return answer


def wait_pending(agent: Agent, session_id: str, timeout: float = 15) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((p for p in pending(agent) if p["session_id"] == session_id), None)

    found: dict[str, Any] = wait_for(find, timeout, f"consent request {session_id}", step=0.1)
    return found


@dataclass
class Desk:
    """A logged-in technician's HTTP client (sync), with the CSRF header set."""

    broker: Broker
    client: httpx.Client
    csrf: str
    username: str

    @classmethod
    def login(cls, broker: Broker, username: str, password: str) -> Desk:
        client = broker.sync_client()
        answer = client.post("/api/v1/login", json={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        csrf = answer.json()["csrf_token"]
        client.headers["X-CSRF-Token"] = csrf
        return cls(broker, client, csrf, username)

    def request(
        self, agent_id: str, kind: str = "shell", reason: str = "printer broken", **extra: Any
    ) -> httpx.Response:
        return self.client.post(
            "/api/v1/sessions", json={"agent_id": agent_id, "kind": kind, "reason": reason, **extra}
        )

    def session(self, session_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.client.get(f"/api/v1/sessions/{session_id}").json()
        return answer

    def wait_state(self, session_id: str, state: str, timeout: float = 15) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (s := self.session(session_id))["state"] == state and s,
            timeout,
            f"session {session_id} to be {state}",
            step=0.1,
        )
        return found

    def cookie_header(self) -> str:
        return f"__Host-allowhelp={self.client.cookies['__Host-allowhelp']}"

    def ws_url(self, session_id: str, what: str = "terminal") -> str:
        return (
            self.broker.url.replace("https://", "wss://") + f"/api/v1/sessions/{session_id}/{what}"
        )

    def close(self) -> None:
        self.client.close()


@contextmanager
def staffed_broker(
    root: Path, *, broker_args: tuple[str, ...] = (), store: str | None = None
) -> Iterator[Fleet]:
    """A running broker with an admin and a technician; every process stopped after."""
    fleet = Fleet(root)
    try:
        broker = fleet.broker(extra=list(broker_args), store=store).start()
        broker.add_user(ADMIN, ADMIN_PW, role="admin")
        broker.add_user(TECH, TECH_PW)
        yield fleet
    finally:
        fleet.close()


@contextmanager
def running_fleet(
    root: Path,
    *,
    broker_args: tuple[str, ...] = (),
    agent_args: tuple[str, ...] = ("--reconnect-cap", "2"),
    agent_env: dict[str, str] | None = None,
    store: str | None = None,
) -> Iterator[tuple[Fleet, Broker, Agent]]:
    """A broker with an admin and a technician, and one enrolled agent online."""
    with staffed_broker(root, broker_args=broker_args, store=store) as fleet:
        broker = fleet.brokers[0]
        agent = fleet.agent()
        enrolled = agent.enroll(broker.token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start(*agent_args, env=agent_env)
        wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
        yield fleet, broker, agent


# A second process that holds the audit database's write lock: a real failure
# of every audit write the broker tries meanwhile (it waits out its busy timeout,
# then gets SQLITE_BUSY), not a mock. WAL mode: readers (the API, `audit export`)
# still work.
_HOLD_AUDIT_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
    "conn.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"  # until the test closes our stdin
)


@contextmanager
def audit_locked(broker: Broker, timeout: float = 40) -> Iterator[None]:
    """While inside, no audit record can be committed; released on leaving."""
    holder = subprocess.Popen(
        [PY, "-c", _HOLD_AUDIT_LOCK, str(broker.data / "audit.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        ready, _, _ = select.select([holder.stdout], [], [], timeout)
        assert ready and holder.stdout.readline() == b"locked\n", "the audit lock was not taken"
        yield
    finally:
        holder.stdin.close()
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(5)
        holder.stdout.close()


def agent_status(agent: Agent) -> dict[str, Any]:
    """What the running agent holds: ``pending`` prompts and granted ``sessions``."""
    from allowhelp.agent.localsocket import call

    return call(agent.config, {"op": "status"})


def log_mark(path: Path) -> int:
    """Where a log file ends now; ``log_since`` reads what was written after."""
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, mark: int) -> str:
    with path.open("rb") as handle:
        handle.seek(mark)
        return handle.read().decode(errors="replace")
