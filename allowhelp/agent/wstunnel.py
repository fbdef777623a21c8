"""The tunnel on the broker's HTTPS port: SSH inside a WebSocket (``wss://.../api/v1/tunnel``).

For PCs whose network lets only HTTPS out. The WebSocket is opened (through
the proxy when there is one), then bridged to one end of a socketpair whose
other end asyncssh takes as if it were the raw port's TCP socket
(``wsbridge.py``): the SSH inside is the same, with the same pinned keys.

Which certificate the HTTPS port may show: the broker's own CA (pinned at
enrolment) or any certificate the system trusts, since admins may put a
public certificate on the console or a TLS-terminating reverse proxy in
front of it. That is safe because TLS is not what authenticates the tunnel:
inside it, SSH accepts only the broker key pinned at enrolment, and the
broker only this PC's enrolled host key. TLS adds privacy from the network
and lets the connection pass proxies that inspect nothing but HTTPS.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from allowhelp import __version__
from allowhelp.agent.proxy import CONNECT_TIMEOUT, open_connection, proxy_for
from allowhelp.wsbridge import MAX_MESSAGE, SUBPROTOCOL, bridge, socket_pair


@functools.lru_cache(maxsize=2)
def tunnel_tls(ca_pem: str) -> ssl.SSLContext:
    """Built once (loading the system's CAs costs ~30 ms): every redial reuses it."""
    context = ssl.create_default_context()  # the system's CAs: a public certificate
    context.load_verify_locations(cadata=ca_pem)  # and the broker's own CA
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def open_https_tunnel(
    url: str, ca_pem: str, proxy_setting: str
) -> tuple[socket.socket, asyncio.Task[None]]:
    """(the socket for asyncssh, the task that carries it over the WebSocket).

    Raises ``OSError`` (``ProxyError`` included) when the broker cannot be
    reached this way; the task ends, and closes the WebSocket, when asyncssh
    closes its socket, and closes that socket when the WebSocket drops.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    sock = await open_connection(host, parts.port or 443, proxy_for(host, proxy_setting))
    try:
        ws = await connect(
            url,
            sock=sock,
            ssl=tunnel_tls(ca_pem),
            server_hostname=host,
            proxy=None,  # already through it: open_connection
            subprotocols=[websockets.Subprotocol(SUBPROTOCOL)],
            compression=None,  # SSH is encrypted: nothing to compress
            max_size=MAX_MESSAGE,
            ping_interval=None,  # SSH keepalives (15 s) keep proxies from idling it out
            open_timeout=CONNECT_TIMEOUT,
            user_agent_header=f"allowhelp-agent/{__version__}",
        )
    except (websockets.exceptions.InvalidHandshake, ssl.SSLError, asyncio.TimeoutError) as exc:
        sock.close()
        raise OSError(f"the HTTPS tunnel at {url} was refused: {_said(exc)}") from exc
    except BaseException:
        sock.close()
        raise
    ours, theirs = socket_pair()
    return theirs, asyncio.create_task(_carry(ws, ours))


async def _carry(ws: ClientConnection, ours: socket.socket) -> None:
    async def receive() -> bytes | None:
        try:
            message = await ws.recv()
        except websockets.exceptions.ConnectionClosed:
            return None
        return message if isinstance(message, bytes) else None

    await bridge(ours, receive, ws.send, ws.close)


def _said(exc: BaseException) -> str:
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, asyncio.TimeoutError):  # Python 3.10: not TimeoutError
        return "no answer in time"
    return str(exc) or type(exc).__name__
