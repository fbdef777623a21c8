"""The local control socket: how the PC user's CLI talks to their running agent.

A UNIX socket in the user's runtime directory (0700), itself 0600, and every
connection's peer credentials (SO_PEERCRED) must show the agent's own uid:
another local user can neither reach it nor, if the modes were loosened,
use it. One JSON request per line, one JSON answer per line, then the
connection closes.

Requests are hostile input like any other: a line longer than
``MAX_REQUEST``, nested too deeply, not JSON or not a known request gets an
answer that says so (``{"ok": false, "error": ...}``), never silence, and the
agent goes on serving.

Where the socket lives, and how it is bound: ``localpath.py`` (light, so that
the doorbell binds it too and hands it over: socket activation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from allowhelp.agent.consent import ConsentRefused
from allowhelp.agent.errors import AgentError
from allowhelp.agent.i18n import _
from allowhelp.agent.localpath import bind_local, socket_path
from allowhelp.agent.service import AgentService
from allowhelp.protocol.hostile_json import ProtocolError, parse_json

log = logging.getLogger(__name__)

MAX_REQUEST = 16 * 1024  # a chat message of 2000 characters, escaped
READ_TIMEOUT = 10.0


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class UnknownRequest(AgentError):
    """A well-formed request this agent does not know (or with missing arguments)."""


class LocalControlServer:
    """``listener``: the socket the doorbell bound and handed over (socket
    activation); it is served as it is and its file left for the doorbell."""

    def __init__(
        self, service: AgentService, path: Path, listener: socket.socket | None = None
    ) -> None:
        self._service = service
        self.path = path
        self._inherited = listener
        self._server: asyncio.AbstractServer | None = None
        self.clients = 0  # connections being answered now (``--linger`` waits for them)

    async def start(self) -> None:
        listener = self._inherited or bind_local(self.path)
        listener.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._client, sock=listener, limit=MAX_REQUEST
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._inherited is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one answer, close: whatever the client sent."""
        self.clients += 1
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid != os.getuid():
                log.warning("control socket: refused a connection from uid %d", uid)
                await _answer(writer, _refusal("this agent belongs to another user"))
                return
            await _answer(writer, await self._answer_one(reader))
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            log.debug("control socket client failed: %s", exc)
        except Exception:  # a bug here must cost one answer, never the agent's socket
            log.exception("control socket: a request could not be handled")
        finally:
            self.clients -= 1
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except asyncio.TimeoutError:
            return _refusal(f"no request within {READ_TIMEOUT:.0f} s")
        except ValueError:  # StreamReader: the line is longer than its limit
            log.warning("control socket: refused a request over %d bytes", MAX_REQUEST)
            return _refusal(f"malformed request: longer than {MAX_REQUEST} bytes")
        try:
            request = parse_json(line, "request")
        except ProtocolError as exc:
            log.warning("control socket: refused a malformed request: %s", exc)
            return _refusal(f"malformed request: {exc}")
        return await self._handle(request)

    async def _handle(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _refusal("malformed request: not a JSON object")
        try:
            return {"ok": True, **await self._dispatch(request)}
        except UnknownRequest as exc:
            return _refusal(f"malformed request: {exc}")
        except (ConsentRefused, AgentError) as exc:
            return _refusal(str(exc))

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        service = self._service
        session_id = request.get("session_id")
        if op == "pending":
            return {"pending": [p.to_json() for p in service.gate.pending()]}
        if op == "status":
            return {
                "connected": service.connected,
                "agent_id": service.config.agent_id,
                "pending": [p.to_json() for p in service.gate.pending()],
                "sessions": [g.to_json() for g in service.gate.grants()],
            }
        if op in ("allow", "deny") and isinstance(session_id, str):
            decision = service.decide(
                session_id,
                allow=op == "allow",
                view_only=bool(request.get("view_only")),
                via="cli",
            )
            return {"session_id": decision.session_id, "view_only": decision.view_only}
        if op == "end" and (session_id is None or isinstance(session_id, str)):
            return {"ended": service.end(session_id)}
        if op in ("messages", "chat"):
            return _chat(service, op, session_id, request.get("text"))
        if op == "request-help":
            message = request.get("message", "")
            code = await service.request_help(message if isinstance(message, str) else "")
            return {"code": code.code, "expires_in": code.expires_in}
        raise UnknownRequest("unknown op, or its arguments are missing")


def _chat(service: AgentService, op: str, session_id: object, text: object) -> dict[str, Any]:
    if not isinstance(session_id, str):
        raise UnknownRequest("session_id is missing")
    if op == "messages":
        return {"messages": [line.to_json() for line in service.messages(session_id)]}
    if not isinstance(text, str):
        raise UnknownRequest("text is missing")
    return {"message": service.say(session_id, text).to_json()}


def _refusal(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()


def call(config_dir: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """The CLI's side: one request, one answer, or an AgentError that says why not."""
    path = socket_path(config_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise AgentError(
                _(
                    "the agent is not running for this configuration "
                    "(no %(path)s): start it with `allowhelp-agent run`"
                )
                % {"path": path}
            ) from None
        except PermissionError:
            raise AgentError(_("%(path)s belongs to another user") % {"path": path}) from None
        except OSError as exc:
            raise AgentError(
                _("cannot reach the running agent: %(error)s") % {"error": exc.strerror or exc}
            ) from exc
        server = peer_uid(sock)
        if server != os.getuid():  # the folder checks make this impossible; trust neither alone
            raise AgentError(
                _("%(path)s is served by uid %(server)s, not by your agent: refusing it")
                % {"path": path, "server": server}
            )
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        raise AgentError(_("the running agent gave no answer"))
    if not answer.get("ok"):
        raise AgentError(str(answer.get("error", "refused")))
    return answer
