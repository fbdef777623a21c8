"""An asyncssh echo server whose connections are the agent's (one packet per
message, the fast lane), and the broker's own client connection to it: real
asyncssh at both ends on 127.0.0.1 (``tests/tunnel``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import asyncssh

from allowhelp.broker.tunnel.sshclient import client_options, start_client
from allowhelp.certs import ssh_options
from allowhelp.certs.ssh_packets import send_one_packet_per_message

AEAD = {"encryption_algs": list(ssh_options.ENCRYPTION_ALGS)}


class Echo(asyncssh.SSHServerSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._chan.write(data)


class Server(asyncssh.SSHServer):
    connections: ClassVar[list[asyncssh.SSHServerConnection]] = []

    def __init__(self, one_packet: bool) -> None:
        self._one_packet = one_packet

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        if self._one_packet:
            send_one_packet_per_message(conn)
        Server.connections.append(conn)

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the packets after it are what is counted

    def session_requested(self) -> Echo:
        return Echo()


def count_sends(conn: object) -> list[int]:
    """Sizes of what ``conn`` hands its transport from now on (one per packet)."""
    sent: list[int] = []
    send: Callable[[bytes], None] = conn._send  # type: ignore[attr-defined]

    def counted(data: bytes) -> None:
        sent.append(len(data))
        send(data)

    conn._send = counted  # type: ignore[attr-defined]
    return sent


@asynccontextmanager
async def echo_server(one_packet: bool, algs: dict[str, Any]) -> AsyncIterator[int]:
    Server.connections = []
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: Server(one_packet),
        encoding=None,
        config=None,
        **algs,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def broker_connection(
    port: int, algs: dict[str, Any], client: Callable[[], asyncssh.SSHClient] = asyncssh.SSHClient
) -> asyncssh.SSHClientConnection:
    """The broker's own connection class and options, as the tunnel listener makes
    them (``client``: the connection's ``SSHClient``, which hears why it closed)."""
    loop = asyncio.get_running_loop()
    options = asyncssh.SSHClientConnectionOptions(
        options=client_options(asyncssh.generate_private_key("ssh-ed25519"), client),
        known_hosts=None,  # the listener's client factory checks the agent's key; not here
        **algs,
    )
    finished: asyncio.Future[None] = loop.create_future()
    _, conn = await loop.create_connection(
        lambda: start_client(loop, options, finished, "127.0.0.1"), "127.0.0.1", port
    )
    await asyncio.wait_for(finished, 10)
    assert isinstance(conn, asyncssh.SSHClientConnection)
    return conn
