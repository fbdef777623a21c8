"""One HTTP request passed to another node's listener, streamed both ways (#21, routing).

The request body goes out as it comes from the technician (a file upload is
never whole in memory), and the answer comes back as the other node sends it
(a download or a listing streams). HTTP/1.1 framing is ``h11``'s; the TLS is
the nodes' mutual TLS (``node_link.py``), and the node reached must be the node
meant. One connection per request: relayed requests are few (a session asked,
ended, its files and chat).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import h11

from allowhelp.broker.errors import AgentUnreachable
from allowhelp.broker.settings import MAX_FILES_TIMEOUT
from allowhelp.broker.store.node_peers import PeerNode

CONNECT_TIMEOUT = 10.0
OPEN_FILES = 20.0  # sessions/files.py OPEN_TIMEOUT: a session's files channel opened
# Between two pieces of the answer: as long as the other node may take to answer a
# files request on its own limits (its channel's opening, then up to four SFTP calls
# before a piece goes out: an upload's last write, close, remove and rename), and a
# margin. A node that is gone closes its connection; one cut off is found by then.
READ_TIMEOUT = OPEN_FILES + 4 * MAX_FILES_TIMEOUT + 10.0
CHUNK = 64 * 1024
EARLY_WAIT = 2.0  # seconds an answer may still take to arrive once the body broke off
# What goes to the other node of the technician's request, and what comes back of
# its answer: credentials and content, never hop-by-hop or proxy headers. The cookie
# is allowhelp's session cookie alone (``console/api/node_routes.py`` keeps only it).
REQUEST_HEADERS = ("cookie", "x-csrf-token", "content-type", "content-length")
ANSWER_HEADERS = ("content-type", "content-length", "content-disposition", "retry-after")

PeerCheck = Callable[[object, PeerNode], None]


@dataclass
class NodeAnswer:
    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]


def _unreachable(node: PeerNode, exc: BaseException) -> AgentUnreachable:
    return AgentUnreachable(
        f"the node holding the machine ({node.address}) cannot be reached: {exc or 'timed out'}"
    )


async def send_to_node(
    node: PeerNode,
    context: ssl.SSLContext,
    check: PeerCheck,
    *,
    method: str,
    target: str,
    headers: dict[str, str],
    body: AsyncIterator[bytes],
) -> NodeAnswer:
    """Send the request; the answer's status and headers, its body as it comes.

    The body iterator must be read to its end (or closed): that closes the connection.
    """
    host, _, port = node.address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), ssl=context),
            CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError) as exc:
        raise _unreachable(node, exc) from exc
    try:
        check(writer.get_extra_info("peercert"), node)
        conn = h11.Connection(h11.CLIENT)
        sent = [(k, v) for k, v in headers.items() if k.lower() in REQUEST_HEADERS]
        if not any(k.lower() == "content-length" for k, _ in sent):
            sent.append(("transfer-encoding", "chunked"))
        sent += [("host", node.address), ("origin", node.https), ("connection", "close")]
        writer.write(conn.send(h11.Request(method=method, target=target, headers=sent)))
        # Read while the body goes out: the other node may answer before it has taken it
        # all (a refusal: view only, a PC stuck on an earlier call) and close at once; its
        # answer is the technician's, not a 502 for the write the close then breaks.
        reading = asyncio.ensure_future(_next(conn, reader))
        try:
            await _send_body(conn, writer, body, reading)
        except OSError:
            await asyncio.wait({reading}, timeout=EARLY_WAIT)
            if not reading.done() or reading.cancelled() or reading.exception() is not None:
                reading.cancel()
                raise
        except BaseException:
            reading.cancel()
            raise
        answer = await reading
        if not isinstance(answer, h11.Response):
            raise AgentUnreachable(f"the node at {node.address} did not answer")
    except (OSError, TimeoutError) as exc:
        writer.close()
        raise _unreachable(node, exc) from exc
    except h11.ProtocolError as exc:  # its text may quote a header: the cookie, say
        writer.close()
        raise AgentUnreachable(
            f"the node holding the machine ({node.address}) broke HTTP: not relayed"
        ) from exc
    except BaseException:
        writer.close()
        raise
    kept = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in answer.headers
        if name.decode("latin-1") in ANSWER_HEADERS
    }
    return NodeAnswer(answer.status_code, kept, _body(conn, reader, writer, node))


async def _send_body(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    body: AsyncIterator[bytes],
    answered: asyncio.Future[object],
) -> None:
    """The request's body, until its end or until the other node has answered (then
    the rest is not sent: the answer, with ``connection: close``, ends the exchange)."""
    async for chunk in body:
        if answered.done():
            return
        if chunk:
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
    if not answered.done():
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(CHUNK), READ_TIMEOUT))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        return event


async def _body(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    node: PeerNode,
) -> AsyncIterator[bytes]:
    try:
        while True:
            try:
                event = await _next(conn, reader)
            except (OSError, TimeoutError, h11.ProtocolError) as exc:
                raise _unreachable(node, exc) from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                # The other node closes once its handler is done (``connection: close``):
                # closing first would cut it short (a download's end record would say
                # it was cut, when the technician got every byte).
                with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                    await asyncio.wait_for(_until_closed(reader), READ_TIMEOUT)
                return
    except BaseException:
        # Cut short (an error, a reader gone, a caller's deadline): no TLS goodbye to
        # wait for, which a stalled node would hold for asyncio's 30 s.
        writer.transport.abort()
        raise
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(CHUNK):
        pass
