"""The tunnel on the HTTPS port: SSH inside a WebSocket at ``/api/v1/tunnel``.

Real broker, real agent processes, real shells: a broker with ``--tunnel off``
is reached on its HTTPS port alone; an agent that cannot reach the raw port
falls back to the HTTPS one by itself; no browser can open the tunnel path;
garbage on it is a refused handshake, not a crash.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from harness import (
    Broker,
    log_since,
    online,
    running_fleet,
    staffed_broker,
    wait_for,
)
from netkit import tcp_ports
from terminalkit import shell_says


def tunnel_url(broker: Broker) -> str:
    return broker.url.replace("https://", "wss://") + "/api/v1/tunnel"


def test_tunnel_off_is_refused_as_a_setting_typo_is() -> None:
    from allowhelp.broker.settings import BrokerSettings

    settings = BrokerSettings.build(Path("/tmp/x"), tunnel="off")
    assert settings.tunnel_host is None
    with pytest.raises(ValueError, match="--tunnel must be HOST:PORT"):
        BrokerSettings.build(Path("/tmp/x"), tunnel="of")
    with pytest.raises(ValueError, match="--trusted-proxy"):
        BrokerSettings.build(Path("/tmp/x"), trusted_proxies=["10.0.0.0/33"])


async def test_a_broker_with_the_tunnel_off_is_reached_on_its_https_port(
    tmp_path: Path,
) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        broker.stop()
        broker.tunnel = "off"
        broker.start()
        assert broker.info["tunnel"] == "off"
        agent = fleet.agent()
        enrolled = agent.enroll(broker.token())
        assert enrolled.returncode == 0, enrolled.stderr
        config = json.loads((agent.config / "agent.json").read_text())
        assert config["tunnel_port"] == 0 and config["tunnel_host"] == ""
        assert config["tunnel_url"] == tunnel_url(broker)
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: online(broker, agent.agent_id), 30, "the agent online over HTTPS")
        await shell_says(broker, agent, "echo over-$((40+3))-https", b"over-43-https")
        # Nothing listens for SSH: the broker's only listening socket is HTTPS.
        assert broker.proc is not None
        listening = tcp_ports(broker.proc.pid, listening=True)
        assert listening == {int(broker.info["https"].rpartition(":")[2])}, listening


async def test_an_agent_that_cannot_reach_the_ssh_port_falls_back_to_https(
    tmp_path: Path,
) -> None:
    with running_fleet(tmp_path) as (_fleet, broker, agent):
        agent.stop()
        config_file = agent.config / "agent.json"
        config = json.loads(config_file.read_text())
        assert config["tunnel_port"] > 0 and config["tunnel_url"]
        config["tunnel_port"] = _closed_port()  # as a branch firewall would
        config_file.write_text(json.dumps(config))
        mark = agent.log.stat().st_size
        agent.start("--reconnect-cap", "2")
        wait_for(lambda: online(broker, agent.agent_id), 30, "the agent online by the fallback")
        said = log_since(agent.log, mark)
        assert "reached the broker by the HTTPS port" in said or "connected" in said, said
        await shell_says(broker, agent, "echo fell-$((1+1))-back", b"fell-2-back")


async def test_no_browser_can_open_the_tunnel(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        context = broker.ssl_context()
        sub = [websockets.Subprotocol("allowhelp-tunnel.v1")]
        for origin in (broker.url, "https://evil.example", "null"):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with connect(
                    tunnel_url(broker),
                    ssl=context,
                    origin=origin,  # type: ignore[arg-type]
                    subprotocols=sub,
                ):
                    pass
            assert refused.value.response.status_code == 403, origin
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect(tunnel_url(broker), ssl=context):  # no subprotocol
                pass
        assert refused.value.response.status_code == 403


async def test_garbage_on_the_tunnel_is_a_failed_handshake_not_a_crash(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        sub = [websockets.Subprotocol("allowhelp-tunnel.v1")]
        mark = broker.log.stat().st_size

        async def send_garbage(payload: bytes | str) -> None:
            async with connect(
                tunnel_url(broker), ssl=broker.ssl_context(), subprotocols=sub
            ) as ws:
                await ws.send(payload)
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    async with asyncio.timeout(30):  # the login timeout is 15 s
                        while True:
                            await ws.recv()

        await asyncio.gather(
            *(
                send_garbage(payload)
                for payload in (
                    b"GET / HTTP/1.1\r\n\r\n",
                    b"SSH-2.0-x\r\n" + b"\x00" * 70000,  # a malformed first packet
                    "text",
                )
            )
        )
        wait_for(
            lambda: "tunnel handshake failed" in log_since(broker.log, mark),
            20,
            "the failed handshake in the log",
        )
        said = log_since(broker.log, mark)
        assert "Traceback" not in said and "never retrieved" not in said, said
        assert broker.proc is not None and broker.proc.poll() is None
        with broker.sync_client() as client:
            assert client.get("/api/v1/me").status_code == 401  # still answering


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_malformed_first_packet_on_the_ssh_port_is_a_failed_handshake(
    tmp_path: Path,
) -> None:
    """The same garbage straight on the raw port: refused, logged, no stray traceback."""
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        mark = broker.log.stat().st_size
        host, _, port = broker.info["tunnel"].rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"SSH-2.0-x\r\n" + b"\x00" * 70000)
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass  # until the broker closes it
        writer.close()
        wait_for(
            lambda: "tunnel handshake failed" in log_since(broker.log, mark),
            20,
            "the failed handshake in the log",
        )
        said = log_since(broker.log, mark)
        assert "Traceback" not in said and "never retrieved" not in said, said
