"""A branch proxy that is down, refuses, or garbles: the agent waits it out.

A real broker and a real agent (``allowhelp-agent run``) whose ``https_proxy``
is a stand-in proxy on 127.0.0.1 (``standinproxy.py``) switched while the agent
runs: nothing listening, ``502`` to every ``CONNECT``, bytes that are no HTTP,
a hang-up, and at last a working ``CONNECT`` proxy. The agent never exits; each
attempt is one log line that names the proxy by host and port (never its
password), spaced by the normal backoff; once the proxy works it comes online
through it by itself. A setting that can never work (not an ``http://`` URL) is
refused at start, in one line naming ``https_proxy``, before anything runs; one
refused only for a broker node learned later is a failed way, redialled.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket

import pytest
from standinproxy import stand_in_proxy

from allowhelp.agent import proxy as agent_proxy
from allowhelp.agent import tunnel as agent_tunnel
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.service import AgentService
from allowhelp.agent.tunnel import AgentTunnel
from harness import ADMIN, ADMIN_PW, Agent, Broker, Fleet, online, wait_for
from netkit import port_of

USER, PASSWORD = "branch7", "s3cret-Proxy-pw"
FAILED = "cannot reach the broker"


@pytest.fixture
def broker(fleet: Fleet) -> Broker:
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    return broker


def proxied_env(proxy_url: str, no_proxy: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "no_proxy")}
    return {**env, "https_proxy": proxy_url, "no_proxy": no_proxy, "http_proxy": ""}


def enrolled(fleet: Fleet, broker: Broker) -> Agent:
    agent = fleet.agent()
    done = agent.enroll(broker.token())  # direct: the proxy comes later
    assert done.returncode == 0, done.stderr
    return agent


def failures(agent: Agent) -> int:
    return agent.log.read_text().count(FAILED)


def said_after(agent: Agent, text: str, what: str) -> None:
    """Two more failed attempts, the last of which says ``text``; the agent still runs."""
    before = failures(agent)
    wait_for(lambda: failures(agent) >= before + 2, 30, f"two attempts while {what}")
    assert agent.proc is not None and agent.proc.poll() is None, agent.log.read_text()
    last = [line for line in agent.log.read_text().splitlines() if FAILED in line][-1]
    assert text in last, last


def test_a_proxy_down_refusing_or_garbling_is_waited_out(fleet: Fleet, broker: Broker) -> None:
    agent = enrolled(fleet, broker)
    with stand_in_proxy("refuse") as proxy:
        proxy.down()  # the branch's proxy is off when the PC starts
        named = f"the proxy 127.0.0.1:{proxy.port}"
        agent.start("--reconnect-cap", "2", env=proxied_env(proxy.url(USER, PASSWORD)))
        said_after(agent, f"cannot connect to {named} (Connection refused)", "it is down")
        proxy.up()
        said_after(agent, f"{named} refused to connect to", "it answers 502")
        assert "(502 Bad Gateway)" in agent.log.read_text()
        proxy.mode = "garbage"
        said_after(agent, f"{named} did not answer as an HTTP proxy", "it garbles")
        proxy.mode = "hangup"
        said_after(agent, named, "it hangs up")
        # The backoff, not a busy loop: with a cap of 2 s, a handful of attempts a second
        # at most (each way of two may fail at once), not thousands.
        assert failures(agent) < 80, failures(agent)
        proxy.mode = "forward"
        wait_for(lambda: online(broker, agent.agent_id), 40, "the agent online via the proxy")
        assert agent.proc is not None and agent.proc.poll() is None
        assert proxy.asked and all(a.startswith("CONNECT ") for a in proxy.asked)
        assert set(proxy.authorizations) == {_basic(USER, PASSWORD)}
    said = agent.log.read_text()
    assert PASSWORD not in said


def test_a_proxy_setting_that_can_never_work_stops_the_start(fleet: Fleet, broker: Broker) -> None:
    agent = enrolled(fleet, broker)
    agent.start(env=proxied_env(f"https://{USER}:{PASSWORD}@127.0.0.1:3128"))
    assert agent.proc is not None
    assert agent.proc.wait(30) == 2
    said = agent.log.read_text()
    assert PASSWORD not in said
    errors = [line for line in said.splitlines() if "error" in line]
    assert errors == [
        "allowhelp-agent: error: the proxy setting is not usable: https_proxy: the proxy must"
        " be an http:// URL (HTTP CONNECT; the tunnel inside is already encrypted), e.g."
        " http://proxy.example.org:3128"
    ], said
    assert "running" not in said, said  # refused before the agent ran (no control socket)


@pytest.mark.parametrize(
    ("url", "secret", "why"),
    [
        # a name IDNA cannot spell: socket's UnicodeError on every try, never mended
        ("http://proxy..example:3128", "", "the proxy URL's host name is not a valid name"),
        (f"http://{USER}:p@{'a' * 64}.example:3128", "", "host name is not a valid name"),
        # a bare "/" in the password after digits: would be host "admin", port 2024,
        # and "Secret..." in every failure line; refused without echoing the URL
        (
            "http://admin:2024/Secret-pw@proxy.example:3128",
            "Secret-pw",
            "the proxy URL has a path, query or fragment (a '/', '?' or '#' in its user"
            " or password must be percent-encoded)",
        ),
        ("http://admin:2024?Secret-pw@proxy.example:3128", "Secret-pw", "a path, query or"),
        ("http://admin:2024#Secret-pw@proxy.example:3128", "Secret-pw", "a path, query or"),
        # a fullwidth "/" in the password: urlsplit's own error quotes user and password
        ("http://admin:pa\uff0fSecret-pw@proxy.example:3128", "Secret-pw", "not a valid URL"),
    ],
)
def test_a_malformed_proxy_url_stops_the_start(
    fleet: Fleet, broker: Broker, url: str, secret: str, why: str
) -> None:
    agent = enrolled(fleet, broker)
    agent.start(env=proxied_env(url))
    assert agent.proc is not None
    assert agent.proc.wait(30) == 2
    said = agent.log.read_text()
    errors = [line for line in said.splitlines() if "error" in line]
    assert len(errors) == 1, said
    assert errors[0].startswith(
        "allowhelp-agent: error: the proxy setting is not usable: https_proxy: "
    ), said
    assert why in errors[0], said
    assert "2024" not in said and (not secret or secret not in said), said
    assert "running" not in said, said


def test_a_proxy_refused_for_a_learned_node_is_a_failed_way(fleet: Fleet, broker: Broker) -> None:
    """The enrolled broker's name is in ``no_proxy``, so a broken ``https_proxy`` is
    never used for it and the start goes on; a node learned later by another name is
    not, so its way fails with the proxy's problem in the log, redialled, the agent up."""
    agent = enrolled(fleet, broker)
    config_file = agent.config / "agent.json"
    config = json.loads(config_file.read_text())
    ssh_port = config["tunnel_port"]
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections refused
        port = dead.getsockname()[1]
        config["tunnel_port"] = port  # the enrolled broker's ways are down
        config["tunnel_url"] = f"wss://localhost:{port}/api/v1/tunnel"
        config_file.write_text(json.dumps(config))
        (agent.config / "nodes.json").write_text(
            json.dumps({"tunnels": [f"127.0.0.1:{ssh_port}"], "urls": []})
        )
        agent.start(
            "--reconnect-cap",
            "2",
            env=proxied_env(f"ftp://{USER}:{PASSWORD}@127.0.0.1:3128", no_proxy="localhost"),
        )
        said_after(agent, "the proxy must be an http:// URL", "the node's way is refused")
        said_after(agent, "the proxy must be an http:// URL", "it is tried again")
        assert PASSWORD not in agent.log.read_text()
        assert port_of(broker.tunnel) == ssh_port


def test_slow_failed_attempts_still_grow_the_backoff(
    fleet: Fleet, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that takes each CONNECT and never answers: every attempt fails only at
    its time limit, longer than ``STABLE_AFTER`` here (15 s per way, 30 s, in the
    field). Only time connected starts the backoff over, so the attempts count up."""
    agent = enrolled(fleet, broker)
    monkeypatch.setattr(agent_proxy, "CONNECT_TIMEOUT", 0.3)  # per way: two ways, 0.6 s
    monkeypatch.setattr(agent_tunnel, "STABLE_AFTER", 0.2)
    counted: list[int] = []

    def backoff_delay(attempt: int, cap: float) -> float:
        counted.append(attempt)
        return 0.01

    monkeypatch.setattr(agent_tunnel, "backoff_delay", backoff_delay)
    with stand_in_proxy("stall") as proxy:
        config = dataclasses.replace(AgentConfig.load(agent.config), proxy=proxy.url())
        tunnel = AgentTunnel(AgentService(config), agent.config)

        async def run() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(tunnel.run_forever(stop))
            while len(counted) < 4 and not running.done():
                await asyncio.sleep(0.05)
            stop.set()
            await running

        asyncio.run(asyncio.wait_for(run(), 30))
        assert len(proxy.asked) >= 8, proxy.asked  # each attempt stalled at the proxy, both ways
    assert counted[:4] == [0, 1, 2, 3], counted
    assert "did not answer within 0.3 s" in tunnel.state.last_error, tunnel.state.last_error


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
