"""What the machine service and the session helper say of view-only files.

- The prompt packet carries ``view_only`` (bounded and type-checked like its other
  fields; an older service sends none: False), and the helper rebuilds the request
  with it, so the user reads "see your files, view only", the text the service
  records in ``consent.granted``.
- A helper says in its ``HelperHello`` that it starts sftp-server read-only for a
  view-only files grant (``files_view_only``); a helper older than that (a
  long-lived one, reconnected to an upgraded service) says nothing: the service's
  tunnel Hello then says no ``files_view_only`` (the broker refuses such a request
  before the user is asked), and the service starts no view-only files program on
  it (that grant's channel ends with a clear error instead of a read-write
  sftp-server). Plain logic, with stand-ins for the connection and the channel.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from allowhelp.agent.channels import GatedChannel
from allowhelp.agent.consent import Grant, Pending
from allowhelp.agent.helper import _pending
from allowhelp.agent.machine import HelperHub
from allowhelp.agent.machinerequests import prompt_packet
from allowhelp.agent.seqpacket import PacketConn
from allowhelp.protocol import helper as hp
from allowhelp.protocol.control import ConsentRequest
from allowhelp.protocol.hostile_json import ProtocolError

SESSION = "s-00000002"


def request(view_only: bool) -> ConsentRequest:
    return ConsentRequest(
        session_id=SESSION,
        organisation="Acme IT",
        technician="Tess",
        kind="files",
        reason="read the log",
        phrase="apple river stone",
        timeout=60.0,
        view_only=view_only,
    )


def test_the_prompt_packet_carries_view_only() -> None:
    pending = Pending(request(True), 0.0, time.monotonic() + 60)
    packet = prompt_packet(pending)
    assert packet.view_only
    back = hp.decode(packet.encode())
    assert isinstance(back, hp.Prompt) and back.view_only
    raw = json.loads(packet.encode())
    del raw["view_only"]  # an older service
    older = hp.decode(json.dumps(raw).encode())
    assert isinstance(older, hp.Prompt) and older.view_only is False
    raw["view_only"] = "yes"
    with pytest.raises(ProtocolError):
        hp.decode(json.dumps(raw).encode())


async def test_the_helper_shows_the_text_the_service_records() -> None:
    pending = Pending(request(True), 0.0, time.monotonic() + 60, language="en")
    shown = _pending(prompt_packet(pending))
    shown.language = "en"
    assert "view only" in shown.prompt_text()
    assert shown.prompt_text() == pending.prompt_text()
    assert shown.to_json()["view_only"] is True


def test_the_helper_hello_says_files_view_only() -> None:
    said = hp.decode(hp.HelperHello(language="en", files_view_only=True).encode())
    assert isinstance(said, hp.HelperHello) and said.files_view_only
    older = hp.decode(json.dumps({"type": "helper", "language": "en"}).encode())
    assert isinstance(older, hp.HelperHello) and older.files_view_only is False


class Conn:
    """A session helper's connection: what the service sends it."""

    uid = os.getuid()
    pid = os.getpid()

    def __init__(self) -> None:
        self.sent: list[hp.Packet] = []

    def send(self, data: bytes, fds: Sequence[int] = ()) -> bool:
        self.sent.append(hp.decode(data))
        return True


def hub_with_helper(hello: hp.HelperHello) -> tuple[HelperHub, Conn]:
    hub = HelperHub(Path("/nonexistent/agent.sock"), active_uid=None)
    conn = Conn()
    hub._helpers.add(cast(PacketConn, conn), hello)
    return hub, conn


def grant(view_only: bool) -> Grant:
    return Grant(SESSION, "files", view_only, "Tess", owner=os.getuid())


CHANNEL = cast(GatedChannel, cast(Any, object()))


async def test_an_older_helper_is_given_no_view_only_files_program() -> None:
    hub, conn = hub_with_helper(hp.HelperHello(language="en"))
    with pytest.raises(RuntimeError, match="older than view-only files"):
        hub.files(CHANNEL, grant(True))
    assert conn.sent == []  # no Open: no sftp-server started read-write
    hub.files(CHANNEL, grant(False))  # an ordinary files grant: as before
    assert [type(p) for p in conn.sent] == [hp.Open]


async def test_a_helper_that_says_files_view_only_starts_it() -> None:
    hub, conn = hub_with_helper(hp.HelperHello(language="en", files_view_only=True))
    hub.files(CHANNEL, grant(True))
    [opened] = conn.sent
    assert isinstance(opened, hp.Open) and opened.kind == "files" and opened.view_only


def test_the_service_says_files_view_only_for_the_signed_in_users_helper() -> None:
    """The tunnel's Hello follows the signed-in user's helper: with an older one the
    broker refuses a view-only files request at once (409
    ``files_view_only_unsupported``), and the user is never asked."""
    older, _ = hub_with_helper(hp.HelperHello(language="en"))
    assert older.hello().files_view_only is False
    current, _ = hub_with_helper(hp.HelperHello(language="en", files_view_only=True))
    assert current.hello().files_view_only is True
    nobody = HelperHub(Path("/nonexistent/agent.sock"), active_uid=None)
    assert nobody.hello().files_view_only is False  # refused as nobody signed in first
