"""A real broker and agent on 127.0.0.1, and a technician with a consented session.

The same console scripts an operator runs (through :mod:`bench.launch`, which
only raises the fd limit unless a lever flag is given), the same HTTP API, and
the agent's CLI for the user's click.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import PY, Procs, log, wait_for

ADMIN, ADMIN_PW = "bench-admin", "bench admin password 123"
TECH, TECH_PW = "bench-tech", "bench tech password 123"


def cli(program: str, *args: str, stdin: str | None = None) -> str:
    module = "allowhelp.broker.cli.main" if program == "broker" else "allowhelp.agent.cli"
    done = subprocess.run(
        [PY, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{program} {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Broker:
    procs: Procs
    data: Path
    levers: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=lambda: [PY, "-m", "bench.launch"])
    https: str = "127.0.0.1:0"
    tunnel: str = "127.0.0.1:0"
    env: dict[str, str] | None = None  # on top of the bench's own environment
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return str(self.info["public_url"])

    def start(self, timeout: float = 60) -> Broker:
        runtime = self.data / "broker.json"
        runtime.unlink(missing_ok=True)
        argv = [*self.launcher, *self.levers, "broker", "serve", "--data", str(self.data)]
        argv += ["--https", self.https, "--tunnel", self.tunnel]
        self.proc = proc = self.procs.start(
            argv, log_path=self.data.parent / "broker.log", env=self.env
        )

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {proc.returncode}; see broker.log")
            try:
                info: dict[str, Any] = json.loads(runtime.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == proc.pid else None

        self.info = wait_for(ready, timeout, "the broker to listen")
        self.https, self.tunnel = self.info["https"], self.info["tunnel"]
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, timeout=60)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data / "ca.pem"))

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=timeout)

    def add_users(self) -> None:
        for name, password, role in ((ADMIN, ADMIN_PW, "admin"), (TECH, TECH_PW, "technician")):
            cli(
                "broker",
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                "--data",
                str(self.data),
                stdin=password + "\n",
            )

    def token(self, uses: int = 1, ttl: str = "1h") -> str:
        out = cli(
            "broker", "token", "create", "--data", str(self.data), "--uses", str(uses), "--ttl", ttl
        )
        return out.strip()


@dataclass
class Desk:
    """A logged-in user's HTTP client with the CSRF header set."""

    broker: Broker
    client: httpx.Client

    @classmethod
    def login(cls, broker: Broker, username: str, password: str, timeout: float = 60) -> Desk:
        client = broker.client(timeout)
        answer = client.post("/api/v1/login", json={"username": username, "password": password})
        if answer.status_code != 200:
            raise RuntimeError(f"login as {username} failed: {answer.status_code} {answer.text}")
        client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        return cls(broker, client)

    def cookie_header(self) -> str:
        return f"__Host-allowhelp={self.client.cookies['__Host-allowhelp']}"

    def agents(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.client.get("/api/v1/agents").json()
        return answer

    def ws_url(self, session_id: str, query: str = "", channel: str = "terminal") -> str:
        """``wss://…/sessions/{id}/terminal`` (or ``/screen``), with ``query`` appended."""
        base = self.broker.url.replace("https://", "wss://")
        return f"{base}/api/v1/sessions/{session_id}/{channel}{query}"

    def close(self) -> None:
        self.client.close()


@dataclass
class Agent:
    procs: Procs
    config: Path
    levers: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # on top of the bench's own environment
    hide: tuple[str, ...] = ()  # names of the bench's environment the agent must not see
    # "tunnel": one process holds the SSH tunnel; "doorbell": ``--idle doorbell``, the
    # idle process holds an HTTPS stream and starts the full agent when rung, which
    # exits again after ``linger`` s idle
    idle: str = "tunnel"
    linger: float = 10.0
    python: str = PY  # the interpreter the agent runs on (its libraries installed there)
    proc: subprocess.Popen[bytes] | None = None

    def enroll(self, token: str) -> None:
        cli("agent", "enroll", token, "--config", str(self.config))

    @property
    def agent_id(self) -> str:
        return str(json.loads((self.config / "agent.json").read_text())["agent_id"])

    def start(self) -> Agent:
        argv = [self.python, "-m", "bench.launch", *self.levers, "agent", "run"]
        argv += ["--config", str(self.config), "--reconnect-cap", "2", "--prompt", "none"]
        if self.idle == "doorbell":
            argv += ["--idle", "doorbell", "--linger", f"{self.linger:g}"]
        self.proc = self.procs.start(
            argv, log_path=self.config.parent / "agent.log", env=self.env, hide=self.hide
        )
        return self

    def call(self, *args: str) -> str:
        return cli("agent", *args, "--config", str(self.config))


@dataclass
class Installation:
    """One broker, one enrolled and running agent, a technician logged in."""

    broker: Broker
    agent: Agent
    desk: Desk

    @classmethod
    def start(
        cls,
        procs: Procs,
        root: Path,
        levers: list[str] | None = None,
        agent_env: dict[str, str] | None = None,
        agent_hide: tuple[str, ...] = (),
        idle: str = "tunnel",
        broker_env: dict[str, str] | None = None,
        python: str = PY,
    ) -> Installation:
        """``python``: the interpreter the broker and the agent run on (the bench's
        own by default; another needs allowhelp's libraries installed for it)."""
        launcher = [python, "-m", "bench.launch"]
        broker = Broker(procs, root / "broker", list(levers or []), launcher, env=broker_env)
        broker.start()
        broker.add_users()
        agent = Agent(procs, root / "agent", list(levers or []), agent_env, agent_hide, idle)
        agent.python = python
        agent.enroll(broker.token())
        agent.start()
        admin = Desk.login(broker, ADMIN, ADMIN_PW)
        try:
            wait_for(
                lambda: any(a["id"] == agent.agent_id and a["online"] for a in admin.agents()),
                30,
                "the agent to come online",
                step=0.2,
            )
        finally:
            admin.close()
        return cls(broker, agent, Desk.login(broker, TECH, TECH_PW))

    def ws_args(
        self, session_id: str, channel: str = "terminal", query: str = ""
    ) -> dict[str, Any]:
        """What the technician's browser brings to open a session socket: the URL,
        trust in the broker's CA, the console's Origin and the login cookie."""
        return {
            "uri": self.desk.ws_url(session_id, query, channel=channel),
            "ssl": self.broker.ssl_context(),
            "origin": self.broker.url,
            "additional_headers": {"Cookie": self.desk.cookie_header()},
        }

    def consented_shell(self, reason: str = "benchmark") -> str:
        """Ask for a shell, click Allow on the PC (CLI), wait for it to be active."""
        return self.consented("shell", reason)

    def consented(self, kind: str, reason: str = "benchmark") -> str:
        """Ask for a ``shell`` or ``screen`` session (full control), click Allow on the PC
        (CLI), wait for it to be active; its id."""
        answer = self.desk.client.post(
            "/api/v1/sessions",
            json={"agent_id": self.agent.agent_id, "kind": kind, "reason": reason},
        )
        if answer.status_code != 201:
            raise RuntimeError(f"session request failed: {answer.status_code} {answer.text}")
        session_id = str(answer.json()["id"])

        def asked() -> bool:
            pending = json.loads(self.agent.call("pending", "--json"))
            return any(p["session_id"] == session_id for p in pending)

        wait_for(asked, 20, "the consent prompt", step=0.1)
        self.agent.call("allow", session_id)
        wait_for(
            lambda: (
                self.desk.client.get(f"/api/v1/sessions/{session_id}").json()["state"] == "active"
            ),
            20,
            "the session to be active",
            step=0.1,
        )
        return session_id

    def end(self, session_id: str) -> None:
        self.desk.client.post(f"/api/v1/sessions/{session_id}/end")

    def close(self) -> None:
        self.desk.close()


def settle(seconds: float) -> None:
    log(f"settling {seconds:g} s")
    time.sleep(seconds)
