"""The doorbell reads its proxy setting once, at its start, as the full agent does.

A setting that can never work (not an ``http://`` URL, a path after the port: in
``https_proxy`` or in ``agent.json``'s ``proxy``) stops a real ``run --idle
doorbell`` at once with the full agent's one line and exit status 2: no
traceback, never the password, no full agent started, no socket left bound. A
proxy that is merely down is a failed ring, dialled again after the backoff, the
doorbell still running. A real broker, real agent processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from allowhelp.agent.doorbellhttp import open_tls, said
from allowhelp.agent.doorbellkey import save_key
from allowhelp.agent.localpath import socket_path
from harness import Agent, Broker, wait_for

PASSWORD = "s3cret-Ring-pw"
FAILED = "cannot ring the broker's doorbell"
NOT_HTTP = (
    "the proxy must be an http:// URL (HTTP CONNECT; the tunnel inside is already "
    "encrypted), e.g. http://proxy.example.org:3128"
)
HAS_PATH = (
    "the proxy URL has a path, query or fragment (a '/', '?' or '#' in its user or "
    "password must be percent-encoded)"
)


def environment(https_proxy: str) -> dict[str, str]:
    names = ("https_proxy", "no_proxy", "http_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in names}
    return {**env, "https_proxy": https_proxy}


@pytest.fixture
def agent(broker: Broker, tmp_path: Path) -> Iterator[Agent]:
    """An agent enrolled directly (the proxy comes after), stopped whatever the outcome."""
    agent = Agent(tmp_path / "agent")
    try:
        done = agent.enroll(broker.token())
        assert done.returncode == 0, done.stderr
        yield agent
    finally:
        agent.stop()


def doorbell(agent: Agent, env: dict[str, str]) -> Agent:
    return agent.start("--prompt", "none", "--idle", "doorbell", "--reconnect-cap", "2", env=env)


@pytest.mark.parametrize(
    ("in_config", "url", "source", "why"),
    [
        (False, f"ftp://branch7:{PASSWORD}@127.0.0.1:3128", "https_proxy", NOT_HTTP),
        # a bare "/" in the password: would read as host "admin", port 2024
        (True, f"http://admin:2024/{PASSWORD}@proxy.example:3128", "agent.json (proxy)", HAS_PATH),
    ],
)
def test_a_proxy_setting_that_can_never_work_stops_the_doorbell(
    agent: Agent, in_config: bool, url: str, source: str, why: str
) -> None:
    env = environment("")
    if in_config:
        config_file = agent.config / "agent.json"
        config = json.loads(config_file.read_text())
        config["proxy"] = url
        config_file.write_text(json.dumps(config))
    else:
        env = environment(url)
    doorbell(agent, env)
    assert agent.proc is not None
    assert agent.proc.wait(20) == 2, agent.log.read_text()
    said = agent.log.read_text()
    errors = [line for line in said.splitlines() if line.strip()]
    assert errors == [f"allowhelp-agent: error: the proxy setting is not usable: {source}: {why}"]
    assert PASSWORD not in said and "2024" not in said, said
    assert not socket_path(agent.config).exists()  # refused before anything was bound


def test_a_proxy_that_is_down_is_rung_through_again(agent: Agent) -> None:
    save_key(agent.config, agent.agent_id, "T" * 43)  # it rings, starts no full agent
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections refused
        port = dead.getsockname()[1]
        doorbell(agent, environment(f"http://branch7:{PASSWORD}@127.0.0.1:{port}"))
        wait_for(lambda: agent.log.read_text().count(FAILED) >= 3, 30, "three failed rings")
        assert agent.proc is not None and agent.proc.poll() is None, agent.log.read_text()
    said = agent.log.read_text()
    last = [line for line in said.splitlines() if FAILED in line][-1]
    assert f"the proxy 127.0.0.1:{port}" in last and "again in" in last, last
    assert "starting the full agent" not in said, said
    assert PASSWORD not in said, said
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0, agent.log.read_text()


@contextmanager
def stalling_proxy() -> Iterator[int]:
    """A port that takes no more connections and never refuses: listening with its
    backlog full (Linux then drops the SYN), as a stalled proxy does."""
    with socket.socket() as server, ExitStack() as held:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(16):  # fill the backlog, until a connection stalls
            client = held.enter_context(socket.socket())
            client.settimeout(0.3)
            try:
                client.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("could not fill a listening socket's backlog here")
        yield port


def test_a_proxy_that_stalls_is_named_as_the_proxy() -> None:
    with stalling_proxy() as port:
        setting = f"http://branch7:{PASSWORD}@127.0.0.1:{port}"
        started = time.monotonic()
        with pytest.raises(OSError) as failed:
            open_tls("https://broker.example:443", "", setting, timeout=1.0)
        assert time.monotonic() - started < 5
    told = said(failed.value)
    assert told == f"cannot connect to the proxy 127.0.0.1:{port} (timed out)", told
    assert PASSWORD not in told and "branch7" not in told
