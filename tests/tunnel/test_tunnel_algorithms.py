"""The tunnel offers one algorithm of each kind (``certs/ssh_options.py``): a peer
offering only others is refused during the key exchange, with the reason said,
and the product's own agent still connects with exactly those."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.service import AgentService
from allowhelp.agent.tunnel import AgentTunnel
from allowhelp.certs import ssh_options
from allowhelp.certs.sshkeys import load_private_key
from harness import log_mark, log_since, online, running_fleet, wait_for

# (what the rogue agent offers, what both ends' errors name)
OTHER_ALGORITHMS: list[tuple[dict[str, Any], str]] = [
    ({"encryption_algs": ["chacha20-poly1305@openssh.com"]}, "No matching encryption algorithm"),
    ({"encryption_algs": ["aes256-ctr"], "mac_algs": ["hmac-sha2-512"]}, "No matching encryption"),
    ({"kex_algs": ["ecdh-sha2-nistp256"]}, "No matching key exchange algorithm"),
    ({"kex_algs": ["curve25519-sha256@libssh.org"]}, "No matching key exchange algorithm"),
]


def test_an_agent_offering_only_other_algorithms_is_refused(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as (_fleet, broker, agent):
        config = json.loads((agent.config / "agent.json").read_text())
        host_key = load_private_key(agent.config / "host_key")  # an enrolled key

        async def offer(algs: dict[str, Any], source: str) -> BaseException:
            options = asyncssh.SSHServerConnectionOptions(
                server_host_keys=[host_key], encoding=None, **algs
            )
            try:
                conn = await asyncssh.connect_reverse(
                    config["tunnel_host"],
                    config["tunnel_port"],
                    config=None,
                    options=options,
                    local_addr=(source, 0),  # the broker logs the first per address
                )
            except (asyncssh.Error, OSError) as exc:
                return exc
            conn.close()
            raise AssertionError(f"a tunnel offering {algs} was let in")

        for i, (algs, why) in enumerate(OTHER_ALGORITHMS):
            mark = log_mark(broker.log)
            refused = asyncio.run(asyncio.wait_for(offer(algs, f"127.0.0.{20 + i}"), 20))
            # Refused in the key exchange, and the reason said on one side at least:
            # whichever end sees the mismatch first tells the other, or aborts
            # (then the other sees only the connection lost).
            assert isinstance(refused, (asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost))

            def refusal_logged(since: int = mark) -> str:
                said = log_since(broker.log, since)
                return said if "tunnel handshake failed:" in said else ""

            logged = wait_for(refusal_logged, 10, "the broker to log the refused tunnel")
            assert why in f"{refused} {logged}", (str(refused), logged)
        # The enrolled agent, which offers the tunnel's algorithms, was never dropped.
        assert online(broker, agent.agent_id)
        assert broker.proc is not None and broker.proc.poll() is None


def test_the_agent_connects_with_exactly_the_tunnel_algorithms(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as (fleet, broker, _agent):
        plain = fleet.agent("plain")
        assert plain.enroll(broker.token()).returncode == 0
        tunnel = AgentTunnel(AgentService(AgentConfig.load(plain.config)), plain.config)

        async def connect() -> dict[str, str]:
            conn = await tunnel.connect_once()
            try:
                await asyncio.to_thread(
                    wait_for, lambda: online(broker, plain.agent_id), 20, "the agent online"
                )
                return {
                    name: str(conn.get_extra_info(name))
                    for name in ("send_cipher", "recv_cipher", "send_compression")
                }
            finally:
                conn.close()
                await conn.wait_closed()

        said = asyncio.run(asyncio.wait_for(connect(), 40))
        assert said == {
            "send_cipher": "aes128-gcm@openssh.com",
            "recv_cipher": "aes128-gcm@openssh.com",
            "send_compression": "none",
        }


class _Broker(asyncssh.SSHClient):
    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        return True


@pytest.mark.parametrize(
    ("algs", "why"),
    [
        ({"encryption_algs": ["aes256-gcm@openssh.com"]}, "No matching encryption algorithm"),
        ({"kex_algs": ["diffie-hellman-group14-sha256"]}, "No matching key exchange algorithm"),
        ({"server_host_key_algs": ["rsa-sha2-256"]}, "Unable to find compatible server host key"),
    ],
)
def test_the_agent_refuses_a_broker_offering_only_other_algorithms(
    tmp_path: Path, algs: dict[str, Any], why: str
) -> None:
    """A listener that offers anything else (a downgrade in the middle, an old
    SSH stack) gets no tunnel: the agent says why, and never authenticates it."""
    with running_fleet(tmp_path) as (fleet, broker, _agent):
        plain = fleet.agent("plain")
        assert plain.enroll(broker.token()).returncode == 0
        broker_key = load_private_key(broker.data / "tunnel_key")

        async def dial() -> str:
            listener = await asyncssh.listen_reverse(
                "127.0.0.1",
                0,
                config=None,
                options=asyncssh.SSHClientConnectionOptions(
                    username=ssh_options.BROKER_USERNAME,
                    client_keys=[broker_key],
                    known_hosts=None,
                    agent_path=None,
                    client_factory=_Broker,
                    **algs,
                ),
            )
            config = dataclasses.replace(
                AgentConfig.load(plain.config),
                tunnel_port=listener.get_port(),
                tunnel_url="",
            )
            tunnel = AgentTunnel(AgentService(config), plain.config)
            try:
                conn = await tunnel.connect_once()
            except OSError as exc:
                return str(exc)
            finally:
                listener.close()
            conn.close()
            raise AssertionError(f"the agent took a tunnel offering {algs}")

        said = asyncio.run(asyncio.wait_for(dial(), 30))
        assert why in said, said
