"""The doorbell through a branch's web proxy: a real tinyproxy that wants a password
and allows CONNECT to the broker's HTTPS port only. The doorbell and the full agent
it starts both go through it (the full agent on the HTTPS port), no connection of
the doorbell bypasses it, and the password is never logged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from proxykit import tinyproxy

from harness import PY, online, run_cli, staffed_broker, wait_for
from netkit import port_of, tcp_ports

USER, PASSWORD = "branch7", "s3cret-Bell-pw"


def test_the_doorbell_goes_through_the_proxy(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        with tinyproxy(tmp_path, [port_of(broker.info["https"])], USER, PASSWORD) as proxy:
            env = {name: "" for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY")}
            env["https_proxy"] = proxy.url(USER, PASSWORD)
            agent = fleet.agent()
            enrolled = run_cli(
                "allowhelp.agent.cli", "enroll", broker.token(), "--config", str(agent.config),
                env=env,
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
            with agent.log.open("ab") as log:
                agent.proc = subprocess.Popen(
                    [
                        PY,
                        "-m",
                        "allowhelp.agent.cli",
                        "run",
                        "--config",
                        str(agent.config),
                        "--prompt",
                        "none",
                        "--idle",
                        "doorbell",
                        "--linger",
                        "2",
                        "--reconnect-cap",
                        "2",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                )
            wait_for(lambda: "is idle and ended" in agent.log.read_text(), 60, "the first wake")
            wait_for(lambda: "doorbell connected" in agent.log.read_text(), 30, "the doorbell")
            assert online(broker, agent.agent_id)
            assert tcp_ports(agent.proc.pid) == {proxy.port}  # the doorbell's one connection
            assert PASSWORD not in agent.log.read_text()
            assert proxy.log.read_text().count("CONNECT") >= 2  # the full agent's, the doorbell's
