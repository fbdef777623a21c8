"""The library internals allowhelp relies on still exist, in the shape it uses them.

Each is pinned by a version range in pyproject.toml that matches what the
suite runs against; when a dependency is upgraded past it, this file says
which name moved, before a subtle failure at run time does.

- asyncssh ``SSHClientConnection(loop, options, wait_accept, wait_fail)`` is
  built by hand by the tunnel listener's own accept loop (as asyncssh's own
  ``listen_reverse`` does) to share one options object across the fleet;
- asyncssh ``SSHConnection._server_sig_algs`` is swapped for a shared set
  (``sshclient.SharedSigAlgs``, memory per agent);
- asyncssh ``SSHClientConnection._auth_methods`` starts as ``[b"none"]`` and is
  set to ``[b"publickey"]`` in ``begin_auth`` (the tunnel listener logs in with its
  key at once: one round trip less per agent in a restart storm);
- asyncssh ``SSHServerChannel._process_env_request`` is replaced so the
  agent refuses every ``env`` request (asyncssh accepts them by itself);
- asyncssh ``sftp.start_sftp_client(conn, loop, utf8_decode_errors, reader,
  writer, path_encoding, path_errors, sftp_version)`` starts the SFTP client on
  a files session's own subsystem channel (``AgentLink.open_sftp``: asyncssh's
  public ``start_sftp_client`` opens only the ``sftp`` subsystem);
- asyncssh ``SSHConnection.send_packet`` sends its empty ``MSG_IGNORE`` through
  ``self.send_packet`` and keeps the cipher in ``_send_encryption``
  (``certs/ssh_packets.py``; ``tests/tunnel/test_one_packet_per_message.py``
  shows plain asyncssh still sends them, and ours not);
- uvicorn ``HttpToolsProtocol`` is subclassed by ``console/httpguard.py``
  for head/body deadlines and sizes, through the hooks named below;
- asyncssh ``SSHConnection``'s keepalive (``_recv_data`` calls
  ``_reset_keepalive_timer``; ``_keepalive_timer``, ``_keepalive_timer_callback``,
  ``_set_keepalive_timer``, ``_cancel_keepalive_timer``, ``_keepalive_interval``,
  ``_auth_complete``, ``_loop``) is re-armed lazily, and ``SSHPacketLogger``'s
  ``log_sent_packet``/``log_received_packet`` are skipped below ``SSHLogger._debug_level``
  3 (``certs/ssh_fastpaths.py``; ``tests/tunnel/test_lazy_keepalive.py``);
- asyncssh ``SSHConnection.send_packet``'s send of an established
  connection's packet (the names in ``ssh_fastpaths.SEND_STATE``, the padding
  from ``os.urandom(padlen)``, ``_send``, ``encrypt_packet``) is done by
  ``ssh_fastpaths.send_now`` with padding from a pool of random bytes
  (``tests/tunnel/test_one_packet_per_message.py``);
- uvicorn ``WebSocketsSansIOProtocol`` is subclassed by ``relay/fastws.py``
  (``handle_connect``, ``handle_bytes``, ``queue``, ``conn``, ``transport``,
  ``writable`` and its state flags; ``tests/relay/test_shortcut.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import asyncssh
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ROOT = Path(__file__).resolve().parents[2]


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["broker"]]
    for line in listed:
        requirement = Requirement(line)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


@pytest.mark.parametrize("name", ["asyncssh", "uvicorn"])
def test_the_installed_version_is_inside_the_pinned_range(name: str) -> None:
    requirement = _requirement(name)
    installed = Version(version(name))
    assert requirement.specifier.contains(installed), (
        f"{name} {installed} is outside {requirement.specifier}: check the private names below"
    )
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
        f"{name} is used through private names: its range needs an upper bound"
    )


def test_asyncssh_client_connection_takes_what_the_accept_loop_passes() -> None:
    params = list(inspect.signature(asyncssh.SSHClientConnection.__init__).parameters)
    assert params[:5] == ["self", "loop", "options", "acceptor", "error_handler"], params


async def test_asyncssh_connections_keep_the_peer_sig_algs_where_we_swap_them() -> None:
    conn = asyncssh.SSHClientConnection(
        asyncio.get_running_loop(),
        asyncssh.SSHClientConnectionOptions(known_hosts=None, username="x"),
        None,
        None,
    )
    try:
        assert isinstance(conn._server_sig_algs, set)
    finally:
        conn.abort()


async def test_asyncssh_client_connections_start_with_the_none_method_we_replace() -> None:
    conn = asyncssh.SSHClientConnection(
        asyncio.get_running_loop(),
        asyncssh.SSHClientConnectionOptions(known_hosts=None, username="x"),
        None,
        None,
    )
    try:
        assert conn._auth_methods == [b"none"]
    finally:
        conn.abort()


def test_asyncssh_server_channels_answer_env_requests_through_the_replaced_method() -> None:
    method = asyncssh.SSHServerChannel._process_env_request
    assert list(inspect.signature(method).parameters) == ["self", "packet"]


@pytest.mark.parametrize(
    "hook",
    [
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "handle_websocket_upgrade",
        "_should_upgrade",
    ],
)
def test_uvicorn_httptools_protocol_has_the_hooks_the_guard_overrides(hook: str) -> None:
    assert callable(getattr(HttpToolsProtocol, hook, None)), f"HttpToolsProtocol.{hook} is gone"


def test_uvicorn_httptools_protocol_keeps_the_state_the_guard_reads() -> None:
    source = inspect.getsource(HttpToolsProtocol)
    for name in ("self.parser", "self.transport", "self.cycle"):
        assert name in source, f"HttpToolsProtocol no longer sets {name}"


def test_asyncssh_sftp_client_starts_on_a_channel_we_opened() -> None:
    from asyncssh import sftp

    params = list(inspect.signature(sftp.start_sftp_client).parameters)
    assert params == [
        "conn",
        "loop",
        "utf8_decode_errors",
        "reader",
        "writer",
        "path_encoding",
        "path_errors",
        "sftp_version",
    ], params
    assert sftp.MIN_SFTP_VERSION == 3


def test_uvicorn_names_a_connection_as_the_node_listener_matches_it() -> None:
    """``node/relay_listener.py`` knows each checked connection by
    ``get_remote_addr(transport)``, which is what uvicorn puts in ``scope["client"]``."""
    from uvicorn.protocols import utils

    assert callable(utils.get_remote_addr)
    source = inspect.getsource(HttpToolsProtocol)
    assert "get_remote_addr(transport)" in source, "uvicorn names clients another way"


async def test_asyncssh_keepalive_has_the_names_the_lazy_timer_replaces() -> None:
    from asyncssh.connection import SSHConnection
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import SSHPacketLogger

    assert "self._reset_keepalive_timer()" in inspect.getsource(SSHConnection._recv_data)
    for name in (
        "_reset_keepalive_timer",
        "_keepalive_timer_callback",
        "_set_keepalive_timer",
        "_cancel_keepalive_timer",
    ):
        assert callable(getattr(SSHConnection, name, None)), f"SSHConnection.{name} is gone"
    assert "self._keepalive_timer_callback" in inspect.getsource(SSHConnection._set_keepalive_timer)
    # the lazy timer's set_keepalive drops the armed timer, then calls asyncssh's
    assert "self._reset_keepalive_timer()" in inspect.getsource(SSHConnection.set_keepalive)
    conn = asyncssh.SSHClientConnection(
        asyncio.get_running_loop(),
        asyncssh.SSHClientConnectionOptions(known_hosts=None, username="x"),
        None,
        None,
    )
    try:
        assert conn._keepalive_timer is None and conn._auth_complete is False
        assert conn._keepalive_interval == 0 and conn._loop is asyncio.get_running_loop()
    finally:
        conn.abort()
    assert isinstance(SSHLogger._debug_level, int)
    assert "self._debug_level >= 3" in inspect.getsource(SSHLogger.packet)
    for name in ("log_sent_packet", "log_received_packet"):
        params = list(inspect.signature(getattr(SSHPacketLogger, name)).parameters)
        assert params == ["self", "pkttype", "pktid", "packet", "note"], params


def test_uvicorn_sansio_protocol_has_what_the_shortcut_uses() -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    for hook in ("handle_connect", "handle_bytes", "send", "receive"):
        assert callable(getattr(WebSocketsSansIOProtocol, hook, None)), hook
    source = inspect.getsource(WebSocketsSansIOProtocol)
    for name in (
        "self.queue",
        "self.conn.send_binary(",
        "self.conn.data_to_send()",
        "self.writable",
        "self.close_sent",
        "self.disconnected",
        "self.handshake_complete",
        "self.initial_response",
        '"extensions": {',
    ):
        assert name in source, f"WebSocketsSansIOProtocol no longer has {name}"


def test_asyncssh_send_packet_is_the_send_that_send_now_does() -> None:
    from asyncssh.connection import SSHConnection

    from allowhelp.certs.ssh_fastpaths import SEND_STATE

    source = inspect.getsource(SSHConnection.send_packet)
    for name in SEND_STATE:
        assert f"self.{name}" in source, f"SSHConnection.send_packet no longer uses {name}"
    for line in (
        "padlen = -(self._send_enchdrlen + len(payload)) % self._send_blocksize",
        "if padlen < 4:",
        "packet = Byte(padlen) + payload + os.urandom(padlen)",
        "self._send_encryption.encrypt_packet(seq, hdr, packet)",
        "self._send(packet + mac)",
        "self._send_seq = (seq + 1) & 0xffffffff",
        "self._rekey_bytes_sent += pktlen",
        "self._send_kexinit()",
    ):
        assert line in source, f"SSHConnection.send_packet no longer has {line!r}"


def test_asyncssh_receive_path_is_the_one_the_fast_lane_does() -> None:
    """``ssh_fastlane.receive_now`` does what ``_recv_data``, ``_recv_pkthdr``,
    ``_recv_packet``, ``_finish_recv_packet`` and ``_process_data`` do for a data
    packet, and seals and opens as ``GCMCipher`` does."""
    from asyncssh.channel import SSHChannel
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_CHANNEL_DATA
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption

    from allowhelp.certs.ssh_fastlane import CHANNEL_STATE, RECEIVE_STATE

    sources = "".join(
        inspect.getsource(part)
        for part in (
            SSHConnection.__init__,
            SSHConnection._recv_data,
            SSHConnection._recv_pkthdr,
            SSHConnection._recv_packet,
            SSHConnection._finish_recv_packet,
            SSHConnection.data_received,
        )
    )
    for name in RECEIVE_STATE:  # the whole name: ``_kex`` is not ``_kex_complete``
        assert re.search(rf"self\.{name}\b", sources), f"asyncssh's receive path lost {name}"
    for line in (
        "self._inpbuf += data",
        "self._reset_keepalive_timer()",
        "while self._inpbuf and self._recv_handler():",
        "self.internal_error()",
        "self._recv_seq = (seq + 1) & 0xffffffff",
        "self._recv_encryption.decrypt_packet(",
        "orig_payload = packet_data[1:-packet_data[0]]",
        "handler = self._channels[recv_chan]",
    ):
        assert line in sources, f"asyncssh's receive path no longer has {line!r}"
    channel = inspect.getsource(SSHChannel)
    for name in CHANNEL_STATE:
        assert re.search(rf"self\.{name}\b", channel), f"SSHChannel no longer uses {name}"
    sends = inspect.getsource(SSHChannel.write) + inspect.getsource(SSHChannel._flush_send_buf)
    for line in (  # what ``write_data`` does for one packet that fits
        "self._send_buf.append((bytearray(encoded_data), datatype))",
        "while self._send_buf and self._send_window:",
        "pktsize = min(self._send_window, self._send_pktsize)",
        "self._send_window -= len(data)",
        "self.send_packet(MSG_CHANNEL_DATA, String(data))",
    ):
        assert line in sources + sends, f"SSHChannel's send no longer has {line!r}"
    assert "payload = UInt32(self._send_chan) + b''.join(args)" in inspect.getsource(
        SSHChannel.send_packet
    )
    framing = inspect.getsource(GCMEncryption.decrypt_header) + inspect.getsource(
        GCMEncryption.get_mac_params
    )
    for line in ("return first_block, first_block[:header_len]", "return 0, 16, True"):
        assert line in framing, f"GCMEncryption no longer has {line!r}"
    process = inspect.getsource(SSHChannel._process_data)
    for line in (
        "self._recv_state != 'open'",
        "datalen > self._recv_window",
        "self._accept_data(data)",
    ):
        assert line in process, f"SSHChannel._process_data no longer has {line!r}"
    assert SSHChannel._packet_handlers[MSG_CHANNEL_DATA] is SSHChannel._process_data
    gcm = inspect.getsource(GCMCipher)
    for line in (
        "AESGCM(self._key).encrypt(self._iv, data, header)",
        "AESGCM(self._key).decrypt(self._iv, data + mac, header)",
        "invocation = (invocation + 1) & 0xffffffffffffffff",
        "self._iv = self._iv[:4] + invocation.to_bytes(8, 'big')",
    ):
        assert line in gcm, f"GCMCipher no longer has {line!r}"


def test_websockets_parser_waits_between_frames_where_the_keystroke_door_looks() -> None:
    """``fastws``'s keystroke door reads a frame itself only while websockets'
    parser waits in ``StreamReader.at_eof`` (between frames) with nothing buffered."""
    from websockets.protocol import Protocol
    from websockets.server import ServerProtocol
    from websockets.streams import StreamReader

    parse = inspect.getsource(Protocol.parse)
    assert "if (yield from self.reader.at_eof()):" in parse
    assert "yield from super().parse()" in inspect.getsource(ServerProtocol.parse)
    assert "self.recv_frame(frame)" in parse
    assert "self.buffer" in inspect.getsource(StreamReader.at_eof)
    init = inspect.getsource(Protocol.__init__)
    for name in (
        "self.current_size",
        "self.parser",
        "self.parser_exc",
        "self.writes",
        "self.expect_continuation_frame",
        "self.extensions",
    ):
        assert name in init, f"websockets' Protocol no longer has {name}"
