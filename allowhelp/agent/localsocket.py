"""The local control socket: how the PC user's CLI talks to their running agent.

A UNIX socket in the user's runtime directory (0700), itself 0600, and every
connection's peer credentials (SO_PEERCRED) must show the agent's own uid:
another local user can neither reach it nor, if the modes were loosened,
use it. One JSON request per line, one JSON answer per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from .consent import ConsentRefused
from .errors import AgentError
from .service import AgentService, HelpDeclined, NotConnected

log = logging.getLogger(__name__)

MAX_REQUEST = 4096


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "allowhelp" if base else Path(f"/tmp/allowhelp-{os.getuid()}")  # noqa: S108
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise AgentError(f"{folder} is not a directory owned by you: refusing to use it")
    os.chmod(folder, 0o700)
    return folder


def socket_path(config_dir: Path) -> Path:
    """One socket per configuration folder, so two agents of one user never mix."""
    digest = hashlib.sha256(str(config_dir.resolve()).encode()).hexdigest()[:16]
    return runtime_dir() / f"agent-{digest}.sock"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class LocalControlServer:
    def __init__(self, service: AgentService, path: Path) -> None:
        self._service = service
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid != os.getuid():
                log.warning("control socket: refused a connection from uid %d", uid)
                await _answer(writer, {"ok": False, "error": "this agent belongs to another user"})
                return
            line = await asyncio.wait_for(reader.readline(), 10)
            await _answer(writer, await self._handle(line))
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("control socket client failed: %s", exc)
        finally:
            writer.close()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line[:MAX_REQUEST])
            if not isinstance(request, dict):
                raise ValueError("not an object")
            return {"ok": True, **await self._dispatch(request)}
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "malformed request"}
        except (ConsentRefused, NotConnected, HelpDeclined) as exc:
            return {"ok": False, "error": str(exc)}

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
        if op == "request-help":
            message = request.get("message", "")
            code = await service.request_help(message if isinstance(message, str) else "")
            return {"code": code.code, "expires_in": code.expires_in}
        raise ValueError("unknown op")


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
                "the agent is not running for this configuration "
                f"(no {path}): start it with `allowhelp-agent run`"
            ) from None
        except PermissionError:
            raise AgentError(f"{path} belongs to another user") from None
        except OSError as exc:
            raise AgentError(f"cannot reach the running agent: {exc.strerror or exc}") from exc
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise AgentError("the running agent gave no answer") from None
    if not answer.get("ok"):
        raise AgentError(str(answer.get("error", "refused")))
    return answer
