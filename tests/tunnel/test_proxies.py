"""Through the branch firewall, with real proxies.

- A real tinyproxy that asks for a password and allows CONNECT to the HTTPS
  port only: the agent enrols and comes online through it (the raw SSH port
  is refused by the proxy, so the agent falls back to the HTTPS port), holds
  no connection that bypasses it, never logs the password, and comes back
  when the proxy cuts everything.
- A wrong password: a plain line naming the proxy, backoff, no busy loop.
- A real nginx terminating TLS in front of a broker with ``--tunnel off``:
  console, enrolment, tunnel and shell through it; the client's address comes
  from X-Forwarded-For only when nginx is a trusted proxy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
from proxykit import Nginx, tinyproxy

from harness import (
    ADMIN,
    ADMIN_PW,
    PY,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    broker_cli,
    online,
    run_cli,
    staffed_broker,
    wait_for,
)
from netkit import port_of, tcp_ports
from terminalkit import shell_says

USER, PASSWORD = "branch7", "s3cret-Proxy-pw"


def start_agent(agent: Agent, env: dict[str, str]) -> None:
    with agent.log.open("ab") as log:
        agent.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "allowhelp.agent.cli",
                "run",
                "--config",
                str(agent.config),
                "--reconnect-cap",
                "2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def no_proxy_env() -> dict[str, str]:
    return {name: "" for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY")}


async def test_through_a_password_proxy_that_allows_only_https(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        https_port = port_of(broker.info["https"])
        with tinyproxy(tmp_path, [https_port], USER, PASSWORD) as proxy:
            env = {**no_proxy_env(), "https_proxy": proxy.url(USER, PASSWORD)}
            agent = fleet.agent()
            enrolled = run_cli(
                "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
                env=env,
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
            start_agent(agent, env)
            wait_for(lambda: online(broker, agent.agent_id), 40, "the agent online via the proxy")
            await shell_says(broker, agent, "echo proxied-$((7*6))", b"proxied-42")

            # No connection bypasses the proxy.
            assert agent.proc is not None
            assert tcp_ports(agent.proc.pid) == {proxy.port}
            said = agent.log.read_text()
            assert PASSWORD not in said
            assert f"the proxy 127.0.0.1:{proxy.port} refused to connect" in said, said
            assert "403" in said  # CONNECT to the raw SSH port is not allowed there
            assert "CONNECT" in proxy.log.read_text()

            # The proxy cuts everything; the agent comes back once it is there again.
            proxy.stop()
            wait_for(lambda: not online(broker, agent.agent_id), 40, "the agent offline")
            proxy.start()
            wait_for(lambda: online(broker, agent.agent_id), 40, "the agent back via the proxy")
            assert PASSWORD not in agent.log.read_text()


async def test_a_wrong_proxy_password_is_said_plainly_and_backed_off(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        https_port = port_of(broker.info["https"])
        with tinyproxy(tmp_path, [https_port], USER, PASSWORD) as proxy:
            agent = fleet.agent()
            wrong = proxy.url(USER, "not-the-password")
            refused = run_cli(
                "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
                "--proxy", wrong, env=no_proxy_env(),
            )  # fmt: skip
            assert refused.returncode != 0
            assert "not-the-password" not in refused.stderr + refused.stdout
            assert f"the proxy 127.0.0.1:{proxy.port}" in refused.stderr
            assert "it refused the user and password" in refused.stderr  # tinyproxy says 401
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

            # Enrolled with the right one, then the proxy's password changes under it.
            enrolled = run_cli(
                "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
                "--proxy", proxy.url(USER, PASSWORD), env=no_proxy_env(),
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
            config_file = agent.config / "agent.json"
            config = json.loads(config_file.read_text())
            assert config["proxy"] == proxy.url(USER, PASSWORD)
            config["proxy"] = wrong
            config_file.write_text(json.dumps(config))
            start_agent(agent, no_proxy_env())
            wait_for(
                lambda: agent.log.read_text().count("cannot reach the broker") >= 2,
                30,
                "two failed attempts",
            )
            # A rate, so a window: with backoff and jitter capped at 2 s, a handful
            # of attempts in 6 s; a busy loop would make thousands.
            before = agent.log.read_text().count("cannot reach the broker")
            time.sleep(6)
            said = agent.log.read_text()
            attempts = said.count("cannot reach the broker") - before
            assert 1 <= attempts <= 15, attempts
            assert "not-the-password" not in said
            assert f"the proxy 127.0.0.1:{proxy.port} refused" in said
            assert "it refused the user and password" in said
            assert not online(broker, agent.agent_id)


async def test_behind_nginx_with_the_tunnel_off(tmp_path: Path) -> None:
    # nginx drops a connection that carries nothing for 25 s (proxy_read_timeout):
    # an idle agent's tunnel must never be that quiet (SSH keepalives, WebSocket pings).
    nginx = Nginx(tmp_path / "nginx", listen="127.0.0.1", bind="127.0.0.3", idle=25)
    nginx.root.mkdir()
    public = f"https://localhost:{nginx.port}"
    args = ("--public-url", public, "--trusted-proxy", "127.0.0.3/32")
    with staffed_broker(tmp_path, broker_args=args) as fleet:
        broker: Broker = fleet.brokers[0]
        broker.stop()
        broker.tunnel = "off"
        broker.start()
        nginx.start(broker.info["https"], broker.data)
        try:
            assert broker.url == public
            agent = fleet.agent()
            enrolled = agent.enroll(broker.token())  # the token names nginx's URL
            assert enrolled.returncode == 0, enrolled.stderr
            config = json.loads((agent.config / "agent.json").read_text())
            assert config["tunnel_url"] == f"wss://localhost:{nginx.port}/api/v1/tunnel"
            agent.start("--reconnect-cap", "2")
            wait_for(lambda: online(broker, agent.agent_id), 40, "the agent online via nginx")
            await shell_says(broker, agent, "echo nginx-$((2*21))", b"nginx-42")
            assert agent.proc is not None
            assert tcp_ports(agent.proc.pid) == {nginx.port}  # the tunnel rides nginx

            # The client's address is the browser's, from X-Forwarded-For set by a
            # trusted nginx; a forged header in front of it changes nothing.
            transport = httpx.HTTPTransport(local_address="127.0.0.5", verify=broker.ssl_context())
            with httpx.Client(base_url=public, transport=transport, timeout=20) as client:
                answer = client.post(
                    "/api/v1/login",
                    json={"username": ADMIN, "password": ADMIN_PW},
                    headers={"X-Forwarded-For": "6.6.6.6"},
                )
                assert answer.status_code == 200, answer.text
            # Straight to the broker (not through a trusted proxy): the header is ignored.
            direct = f"https://{broker.info['https']}"
            with httpx.Client(base_url=direct, verify=False, timeout=20) as client:
                answer = client.post(
                    "/api/v1/login",
                    json={"username": TECH, "password": TECH_PW},
                    headers={"X-Forwarded-For": "6.6.6.6", "Origin": public},
                )
                assert answer.status_code == 200, answer.text
            records = [
                json.loads(line)
                for line in broker_cli(
                    "audit", "export", "--data", str(broker.data)
                ).stdout.splitlines()
            ]
            remotes = {
                r["target"]: r["details"]["remote"] for r in records if r["type"] == "auth.login.ok"
            }
            assert remotes[ADMIN] == "127.0.0.5", remotes
            assert remotes[TECH] == "127.0.0.1", remotes

            # Idle for longer than nginx's timeout: the same tunnel is still up.
            connects = agent.log.read_text().count("connected to the broker")
            time.sleep(40)  # a span with nothing to await: the fact is that nothing happens
            assert online(broker, agent.agent_id)
            said = agent.log.read_text()
            assert said.count("connected to the broker") == connects, said
            assert "tunnel closed" not in said, said
        finally:
            nginx.stop()


async def test_a_proxy_that_stalls_is_given_up_on_and_named(tmp_path: Path) -> None:
    """A proxy that takes the connection and never answers: one line naming it
    after 15 s, then the backoff; no secret in the log."""
    with staffed_broker(tmp_path) as fleet, socket.socket() as staller:
        broker = fleet.brokers[0]
        staller.bind(("127.0.0.1", 0))
        staller.listen(16)  # the kernel completes the handshakes; nobody ever answers
        stalling = f"http://{USER}:{PASSWORD}@127.0.0.1:{staller.getsockname()[1]}"
        agent = fleet.agent()
        enrolled = run_cli(
            "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
            "--proxy", stalling, env=no_proxy_env(),
        )  # fmt: skip
        assert enrolled.returncode != 0
        assert PASSWORD not in enrolled.stderr and "timed out" in enrolled.stderr
        enrolled = run_cli(
            "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
            "--proxy", "direct", env=no_proxy_env(),
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        config_file = agent.config / "agent.json"
        config = json.loads(config_file.read_text())
        config["proxy"] = stalling
        config_file.write_text(json.dumps(config))
        start_agent(agent, no_proxy_env())
        wait_for(
            lambda: "did not answer within 15 s" in agent.log.read_text(),
            60,
            "the stalled proxy named in the log",
        )
        said = agent.log.read_text()
        assert f"the proxy 127.0.0.1:{staller.getsockname()[1]} did not answer" in said
        assert PASSWORD not in said
        assert not online(broker, agent.agent_id)
