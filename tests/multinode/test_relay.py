"""Routing between broker nodes (#21, docs/multinode.md "Routing").

Real nodes on one real PostgreSQL, each with ``--node-listen`` on 127.0.0.1, and
a real agent connected to node B: a technician logged in on node A sees it
online, opens a shell on it through A (B asks the PC, opens the channel, records
and audits), types a command and reads its output; the session ends from either
side; B killed mid-session closes A's page at once, audited. The node listener
refuses anything that is not a live node: no certificate, another CA, the
console's certificate, a CA-signed certificate that names no node, or names a
node that is not (or no longer) live; and a relayed request gets no further than
the technician's own login, rights and the PC user's consent allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import secrets
import shutil
import ssl
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from machinekit import CAN_RUN, WHY_NOT, local_users, passable_folder
from userkit import UserAgent, user_path
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from allowhelp.broker.errors import AgentUnreachable
from allowhelp.broker.relay.node_link import NodeCredentials, _connection_to
from allowhelp.broker.store.node_peers import PeerNode
from allowhelp.certs.nodecert import issue_node_certificate, node_id_in
from harness import (
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    Fleet,
    agent_call,
    broker_cli,
    online,
    running_fleet,
    staffed_broker,
    wait_for,
    wait_pending,
)
from screenkit import (
    MARK_BOX,
    MARK_COLOUR,
    RfbClient,
    colour_box,
    key_event,
    screen_socket,
    start_xserver,
)
from terminalkit import Terminal

RELAY = ["--node-listen", "127.0.0.1:0"]
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE")
KEYSYM_Q = 0x71
FILES_USER = "ahrelay"
OTHER_TECH, OTHER_PW = "ahrelay-bob", "bob password 123"


def _node(fleet: Fleet, home: Broker, pg_url: str, name: str) -> Broker:
    """Another node on the same database with a copy of ``home``'s PKI (the join step)."""
    data = fleet.root / name
    data.mkdir(mode=0o700)
    for item in ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key"):
        shutil.copy2(home.data / item, data / item)  # the documented files, not node.id
    return fleet.broker(name, store=pg_url, extra=list(RELAY)).start()


def _node_id(broker: Broker) -> str:
    return (broker.data / "node.id").read_text().strip()


def _listener(pg_url: str, broker: Broker) -> tuple[str, int]:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT address FROM node_peers WHERE node_id = %s", (_node_id(broker),)
        ).fetchone()
    assert row is not None, "the node wrote no listener address"
    host, _, port = str(row[0]).rpartition(":")
    assert host == "127.0.0.1"
    return host, int(port)


def _records(pg_url: str, target: str | None = None) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--store", pg_url)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r for r in records if target is None or r.get("target") == target]


def _types(pg_url: str, target: str) -> list[str]:
    return [r["type"] for r in _records(pg_url, target)]


def _verified(pg_url: str) -> None:
    done = broker_cli("audit", "verify", "--store", pg_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True


def _asked_and_allowed(desk: Desk, agent: Agent) -> str:
    answer = desk.request(agent.agent_id)
    assert answer.status_code == 201, answer.text
    session_id = str(answer.json()["id"])
    asked = wait_pending(agent, session_id)
    # The PC user reads the phrase the technician got from node A (made by node B).
    assert asked["phrase"] == answer.json()["phrase"] and asked["technician"]
    assert agent_call(agent, "allow", session_id).returncode == 0
    desk.wait_state(session_id, "active")
    return session_id


@asynccontextmanager
async def _terminal(desk: Desk, session_id: str) -> AsyncIterator[Terminal]:
    async with connect(
        desk.ws_url(session_id) + "?cols=100&rows=30",
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
    ) as ws:
        yield Terminal(ws)


async def _closed(term: Terminal, timeout: float = 15) -> tuple[int, str]:
    """Read until the relay closes the page's socket; its close code and reason."""

    async def drain() -> tuple[int, str]:
        try:
            while True:
                await term.ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason

    return await asyncio.wait_for(drain(), timeout)


async def test_a_technician_on_node_a_opens_a_shell_on_an_agent_of_node_b(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url, broker_args=tuple(RELAY)) as (fleet, b, agent):
        a = _node(fleet, b, pg_url, "node-a")
        # Node A lists the agent (held by B) as online, and says which node holds it.
        listed = wait_for(
            lambda: next(r for r in a.agents(TECH, TECH_PW) if r["id"] == agent.agent_id),
            10,
            "node A to list the agent",
        )
        assert listed["online"] is True and listed["node"] == _node_id(b)

        desk = Desk.login(a, TECH, TECH_PW)
        # 1. A shell through A: typed on A, run by the PC through B's tunnel.
        first = await asyncio.to_thread(_asked_and_allowed, desk, agent)
        async with _terminal(desk, first) as term:
            await term.send("echo through-$((20+1))-nodes\n")
            await term.expect(b"through-21-nodes", timeout=30)
            # The technician's end button on A ends it on B; A's page hears how.
            ended = desk.client.post(f"/api/v1/sessions/{first}/end")
            assert ended.status_code == 200, ended.text
            assert ended.json()["end_reason"] == "technician"
            code, reason = await _closed(term)
        # (the page's close reason is what the relay saw, the channel closed, as for a
        # local session; the record has the technician's end)
        assert code == 1000 and reason.startswith("session ended: "), (code, reason)
        types = _types(pg_url, first)
        assert types == [
            "session.requested",
            "consent.asked",
            "consent.granted",
            "session.relayed",
            "session.started",
            "request.relayed",  # the end button, on A's record before it went to B
            "session.ended",
        ], types
        relayed = next(r for r in _records(pg_url, first) if r["type"] == "session.relayed")
        assert relayed["details"]["from_node"] == _node_id(a)
        assert relayed["details"]["to_node"] == _node_id(b)
        assert relayed["actor"] == f"technician:{TECH}"
        # The recording is B's (the node with the tunnel), and replays what was typed.
        cast = b.data / "recordings" / f"{first}.cast"
        assert b"through-21-nodes" in cast.read_bytes()
        assert not (a.data / "recordings" / f"{first}.cast").exists()

        # The relay's cost: a keystroke's round trip through A and straight on B, taken
        # in turns (the machine is shared: load falls on both alike).
        desk_b = Desk.login(b, TECH, TECH_PW)
        through_a = await asyncio.to_thread(_asked_and_allowed, desk, agent)
        direct = await asyncio.to_thread(_asked_and_allowed, desk_b, agent)
        times: dict[str, list[float]] = {"through A": [], "on B": []}
        async with _terminal(desk, through_a) as via_a, _terminal(desk_b, direct) as on_b:
            for n in range(40):
                name, term = ("through A", via_a) if n % 2 == 0 else ("on B", on_b)
                started = time.perf_counter()
                await term.send(f"echo rt$(({n}))x\n")  # the output, not the typed line
                await term.expect(f"rt{n}x".encode(), timeout=30)
                times[name].append(time.perf_counter() - started)
        for name, taken in times.items():
            print(f"round trip {name}: median {statistics.median(taken) * 1000:.1f} ms")
        assert statistics.median(times["through A"]) < 1.0
        for session_id, who in ((through_a, desk), (direct, desk_b)):
            who.client.post(f"/api/v1/sessions/{session_id}/end")
            who.wait_state(session_id, "ended")
        desk_b.close()

        # 2. The PC user ends it: A's page is closed with the user's reason.
        second = await asyncio.to_thread(_asked_and_allowed, desk, agent)
        async with _terminal(desk, second) as term:
            await term.send("echo second-$((1+1))\n")
            await term.expect(b"second-2", timeout=30)
            assert agent_call(agent, "end", second).returncode == 0
            assert await _closed(term) == (1000, "session ended: user")
        assert desk.wait_state(second, "ended")["end_reason"] == "user"

        # 3. B killed with -9 mid-session: A closes the page at once, audited.
        third = await asyncio.to_thread(_asked_and_allowed, desk, agent)
        async with _terminal(desk, third) as term:
            await term.send("echo third-$((1+2))\n")
            await term.expect(b"third-3", timeout=30)
            b.kill()
            killed = time.monotonic()
            code, reason = await _closed(term, timeout=10)
            took = time.monotonic() - killed
        assert code == 1011 and "went away" in reason, (code, reason)
        print(f"node B killed: the page on node A closed after {took:.2f} s")
        assert took < 5
        assert "session.relay_lost" in _types(pg_url, third)
        # Its record ends once B's heartbeat is stale (a live node claims its sessions).
        assert desk.wait_state(third, "ended", timeout=90)["end_reason"] in (
            "broker_restart",
            "agent_lost",
        )
        desk.close()
    _verified(pg_url)  # every node's records, one chain


def _client_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _ask(
    address: tuple[str, int],
    context: ssl.SSLContext,
    path: str = "/api/v1/sessions",
    method: str = "POST",
) -> int:
    """One request on the node listener; its status, or 0 when the connection is refused."""
    conn = http.client.HTTPSConnection(*address, context=context, timeout=10)
    try:
        body = b"{}" if method == "POST" else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def _ca(folder: Path) -> tuple[Path, Path]:
    """A CA of another installation (not the nodes' shared one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(exist_ok=True)
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "ca.pem", folder / "ca.key"


def _client_cert(ca: tuple[Path, Path], folder: Path) -> tuple[Path, Path]:
    """A certificate the shared CA signed for client use that names no node (as a
    technician's or an agent's would be, if the CA signed any)."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TECH)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pc.example.org")]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "client.pem", folder / "client.key"


def _as_node(data: Path, node_id: str, folder: Path) -> ssl.SSLContext:
    """A client holding a certificate the shared CA signed naming ``node_id``."""
    cert, key = folder / f"{node_id}.pem", folder / f"{node_id}.key"
    issue_node_certificate(data / "ca.pem", data / "ca.key", node_id, cert, key)
    return _client_context(data / "ca.pem", cert, key)


def _refusals(pg_url: str) -> list[dict[str, Any]]:
    return [r for r in _records(pg_url) if r["type"] == "node.peer_refused"]


def test_the_node_listener_takes_live_nodes_only(tmp_path: Path, pg_url: str) -> None:
    with running_fleet(tmp_path, store=pg_url, broker_args=tuple(RELAY)) as (fleet, b, _):
        a = _node(fleet, b, pg_url, "node-a")
        address = _listener(pg_url, b)
        ca = b.data / "ca.pem"
        work = tmp_path / "certs"
        work.mkdir()
        # No certificate at all, and a node certificate from another CA: no handshake.
        assert _ask(address, _client_context(ca, None, None)) == 0
        other_ca = _ca(tmp_path / "other-ca")
        issue_node_certificate(*other_ca, _node_id(a), work / "o.pem", work / "o.key")
        assert _ask(address, _client_context(ca, work / "o.pem", work / "o.key")) == 0
        # The console's certificate, signed by the shared CA, names no node.
        assert _ask(address, _client_context(ca, b.data / "tls.pem", b.data / "tls.key")) == 0
        # A client certificate the shared CA signed, that names no node.
        cert, key = _client_cert((ca, b.data / "ca.key"), work)
        assert _ask(address, _client_context(ca, cert, key)) == 0
        # A node certificate for a node id that is no row, or a node long dead.
        assert _ask(address, _as_node(b.data, "f" * 32, work)) == 0
        dead = "d" * 32
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "INSERT INTO broker_nodes (id, host, pid, https, tunnel, started, heartbeat)"
                " VALUES (%s, 'gone', 1, 'https://gone', 'off', 0, 0)",
                (dead,),
            )
        assert _ask(address, _as_node(b.data, dead, work)) == 0
        refused = wait_for(lambda: len(_refusals(pg_url)) >= 3 and _refusals(pg_url), 10, "audit")
        problems = sorted(r["details"]["problem"] for r in refused)
        assert problems == [
            "its certificate names no broker node",
            f"node {dead} is not a live broker node",
            f"node {'f' * 32} is not a live broker node",
        ], problems
        # The control: node A's id, live, is let in, and gets the console's own
        # refusals: no technician logged in, and nothing but the relayed routes.
        as_a = _as_node(b.data, _node_id(a), work)
        assert _ask(address, as_a) == 401
        assert _ask(address, as_a, "/api/v1/users") == 404
        # the reads a node may ask (a session list's invitations, a session's page) and
        # no other: a recording, the audit log, a path one character off
        assert _ask(address, as_a, "/api/v1/sessions", "GET") == 401
        assert _ask(address, as_a, "/api/v1/sessions/s-0123456789ab", "GET") == 401
        for path in ("/api/v1/sessions/s-0123456789ab/recording", "/api/v1/audit",
                     "/api/v1/sessions/", "/api/v1/agents"):  # fmt: skip
            assert _ask(address, as_a, path, "GET") == 404, path
        assert len(_refusals(pg_url)) == 3
    _verified(pg_url)


async def test_a_relayed_request_gets_no_further_than_the_technician_could(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url, broker_args=tuple(RELAY)) as (fleet, b, agent):
        b.add_user(OTHER_TECH, OTHER_PW)
        a = _node(fleet, b, pg_url, "node-a")
        wait_for(
            lambda: any(r["online"] for r in a.agents(TECH, TECH_PW) if r["id"] == agent.agent_id),
            10,
            "node A to list the agent online",
        )
        desk = Desk.login(a, TECH, TECH_PW)
        answer = desk.request(agent.agent_id)
        assert answer.status_code == 201, answer.text
        session_id = str(answer.json()["id"])
        wait_pending(agent, session_id)
        # Not consented yet: the terminal is refused, through A as on B.
        with pytest.raises(InvalidStatus) as early:
            async with _terminal(desk, session_id):
                pass
        assert early.value.response.status_code == 403
        assert agent_call(agent, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        # Another technician, logged in on A, cannot attach to it through A...
        bob = Desk.login(a, OTHER_TECH, OTHER_PW)
        with pytest.raises(InvalidStatus) as other:
            async with _terminal(bob, session_id):
                pass
        assert other.value.response.status_code == 403
        # ...nor by asking B's listener directly as node A would (a live node's
        # certificate): B checks the technician's login and the session's owner itself.
        as_a = _as_node(b.data, _node_id(a), tmp_path)
        host, port = _listener(pg_url, b)
        for cookie in (bob.cookie_header(), "__Host-allowhelp=forged"):
            with pytest.raises(InvalidStatus) as direct:
                async with connect(
                    f"wss://{host}:{port}/api/v1/sessions/{session_id}/terminal",
                    ssl=as_a,
                    origin=b.url,  # type: ignore[arg-type]
                    additional_headers={"Cookie": cookie},
                ):
                    pass
            assert direct.value.response.status_code == 403
        # Ending it takes the technician's CSRF header, on B as on A.
        conn = http.client.HTTPSConnection(host, port, context=as_a, timeout=10)
        conn.request(
            "POST",
            f"/api/v1/sessions/{session_id}/end",
            headers={"Cookie": desk.cookie_header(), "Origin": b.url},
        )
        assert conn.getresponse().status == 403
        conn.close()
        assert desk.session(session_id)["state"] == "active"
        # Bob's end button on A does nothing to alice's session.
        assert bob.client.post(f"/api/v1/sessions/{session_id}/end").status_code == 404
        # Alice's own relayed shell works, and her end button ends it.
        async with _terminal(desk, session_id) as term:
            await term.send("echo still-$((3*3))\n")
            await term.expect(b"still-9", timeout=30)
        ended = desk.client.post(f"/api/v1/sessions/{session_id}/end")
        assert ended.status_code in (200, 409), ended.text  # closing the page may end it first
        assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
        types = _types(pg_url, session_id)
        assert types.count("session.started") == 1
        # Each attempt through A was relayed (B refused the early one and Bob's: B's
        # attach rules decide); Bob's knocks, through A and straight at B's listener,
        # are on B's record.
        records = _records(pg_url, session_id)
        assert [r["actor"] for r in records if r["type"] == "session.relayed"] == [
            f"technician:{TECH}",
            f"technician:{OTHER_TECH}",
            f"technician:{TECH}",
        ]
        assert [r["actor"] for r in records if r["type"] == "participant.refused"] == [
            f"technician:{OTHER_TECH}"
        ] * 2
        bob.close()
        desk.close()
    _verified(pg_url)


@pytest.mark.x11
async def test_the_screen_of_an_agent_of_node_b_through_node_a(tmp_path: Path, pg_url: str) -> None:
    xserver = start_xserver(tmp_path)
    try:
        with staffed_broker(tmp_path, broker_args=tuple(RELAY), store=pg_url) as fleet:
            b = fleet.brokers[0]
            agent = fleet.agent()
            assert agent.enroll(b.token()).returncode == 0
            env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
            agent.start("--reconnect-cap", "2", "--prompt", "none", env={**env, **xserver.env()})
            wait_for(lambda: online(b, agent.agent_id), 20, "the agent online on B")
            a = _node(fleet, b, pg_url, "node-a")
            desk = Desk.login(a, TECH, TECH_PW)
            answer = desk.request(agent.agent_id, kind="screen")
            assert answer.status_code == 201, answer.text
            session_id = str(answer.json()["id"])
            wait_pending(agent, session_id)
            assert agent_call(agent, "allow", session_id).returncode == 0
            desk.wait_state(session_id, "active")
            async with screen_socket(desk, session_id) as ws:
                assert ws.subprotocol == "binary"  # B's choice, passed on by A
                client = RfbClient(ws)
                init = await client.handshake()
                await client.request_raw(init)
                rects = await client.framebuffer_update(init)
                assert colour_box(rects, init, MARK_COLOUR) == MARK_BOX  # the PC's screen
                mark = xserver.keys_mark()
                xserver.focus_window()
                await client.send(key_event(KEYSYM_Q, True) + key_event(KEYSYM_Q, False))
                await asyncio.to_thread(
                    wait_for, lambda: "keysym 0x71, q)" in xserver.keys_since(mark), 10, "the key"
                )
            ended = desk.wait_state(session_id, "ended")
            assert ended["end_reason"] == "technician"
            desk.close()
            # Recorded by B, the node with the tunnel, with the key the technician sent.
            recording = (b.data / "recordings" / f"{session_id}.rfb").read_bytes()
            assert key_event(KEYSYM_Q, True) in recording
            types = _types(pg_url, session_id)
            assert types.index("session.relayed") < types.index("session.started")
    finally:
        xserver.close()
    _verified(pg_url)


@pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
def test_files_chat_and_notes_of_an_agent_of_node_b_through_node_a(
    tmp_path: Path, pg_url: str
) -> None:
    with (
        local_users(FILES_USER),
        passable_folder() as root,
        staffed_broker(tmp_path, broker_args=tuple(RELAY), store=pg_url) as fleet,
    ):
        b = fleet.brokers[0]
        agent = UserAgent(root / "pc" / "agent", user=FILES_USER)
        fleet.agents.append(agent)
        enrolled = agent.enroll(b.token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start("--reconnect-cap", "2", "--prompt", "none")
        wait_for(lambda: online(b, agent.agent_id), 30, "the user's agent online on B")
        a = _node(fleet, b, pg_url, "node-a")
        desk = Desk.login(a, TECH, TECH_PW)
        answer = desk.request(agent.agent_id, "files", "copy the report")
        assert answer.status_code == 201, answer.text
        session_id = str(answer.json()["id"])
        agent.wait_pending(session_id)
        assert agent.cli("allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        files = f"/api/v1/sessions/{session_id}/files"
        # An upload larger than any JSON body, streamed through A and B to the PC.
        data = secrets.token_bytes(3 * 1024 * 1024 + 17)
        digest = hashlib.sha256(data).hexdigest()
        put = desk.client.put(f"{files}/content", params={"path": "report.bin"}, content=data)
        assert put.status_code == 201, put.text
        assert put.json() == {"path": "report.bin", "size": len(data), "sha256": digest}
        assert user_path(FILES_USER, "report.bin").read_bytes() == data
        got = desk.client.get(f"{files}/content", params={"path": "report.bin"})
        assert got.status_code == 200, got.text
        assert got.content == data and got.headers["content-length"] == str(len(data))
        listing = desk.client.get(files, params={"path": "."})
        assert listing.status_code == 200, listing.text
        assert any(e["name"] == "report.bin" for e in listing.json())
        # A path the rules refuse is refused by B, and said through A.
        bad = desk.client.get(f"{files}/content", params={"path": "../etc/shadow"})
        assert bad.status_code == 400, bad.text
        # Chat both ways, and the technician's notes, kept by B.
        said = desk.client.post(f"/api/v1/sessions/{session_id}/messages", json={"text": "hi"})
        assert said.status_code == 201, said.text
        heard = agent.cli("messages", session_id, "--json")
        assert heard.returncode == 0 and "hi" in [m["text"] for m in json.loads(heard.stdout)]
        assert agent.cli("chat", session_id, "hello from the PC").returncode == 0
        chat = f"/api/v1/sessions/{session_id}/messages"
        wait_for(
            lambda: "hello from the PC" in [m["text"] for m in desk.client.get(chat).json()],
            10,
            "the PC's message through A",
        )
        noted = desk.client.patch(f"/api/v1/sessions/{session_id}", json={"notes": "done"})
        assert noted.status_code == 200 and noted.json()["notes"] == "done", noted.text
        ended = desk.client.post(f"/api/v1/sessions/{session_id}/end")
        assert ended.status_code == 200 and ended.json()["end_reason"] == "technician"
        assert desk.session(session_id)["notes"] == "done"
        desk.close()

        def transfers() -> list[tuple[str, str, str]]:
            return sorted(
                (r["type"], r["details"]["direction"], r["details"]["sha256"])
                for r in _records(pg_url, session_id)
                if r["type"].startswith("files.transfer.") and r["type"] != "files.transfer.started"
            )

        # The download's record is written once B has sent its last byte (A waits
        # for B to finish before it lets the connection go, so none is cut).
        wanted = [("files.transfer.done", d, digest) for d in ("download", "upload")]
        wait_for(lambda: transfers() == wanted, 15, "both transfers done on the record")
        assert _types(pg_url, session_id).count("session.ended") == 1
    _verified(pg_url)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--node-listen", "127.0.0.1:0"], "give --store postgresql://"),
        (
            ["--node-listen", "8444", "--store", "postgresql://h/d"],
            "--node-listen must be HOST:PORT",
        ),
        (["--node-listen", "0.0.0.0:8444", "--store", "postgresql://u@h/d"], "--node-address"),
        (["--node-address", "10.0.0.2"], "--node-address names where --node-listen is dialled"),
        (
            [
                "--node-listen",
                "127.0.0.1:1",
                "--node-address",
                "a/b",
                "--store",
                "postgresql://h/d",
            ],
            "--node-address must be a host name",
        ),
    ],
)
def test_bad_node_flags_are_one_clear_line(tmp_path: Path, flags: list[str], said: str) -> None:
    done = broker_cli("serve", "--data", str(tmp_path / "data"), *flags)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything is made


def test_a_certificate_names_one_node_or_none(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    node = "a" * 32
    issue_node_certificate(*ca, node, tmp_path / "n.pem", tmp_path / "n.key")
    cert = x509.load_pem_x509_certificate((tmp_path / "n.pem").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:allowhelp:node:{node}"
    ]
    assert (tmp_path / "n.key").stat().st_mode & 0o777 == 0o600
    uri = ("URI", f"urn:allowhelp:node:{node}")
    assert node_id_in({"subjectAltName": (uri,)}) == node
    assert node_id_in({"subjectAltName": (uri, ("URI", "urn:allowhelp:node:" + "b" * 32))}) is None
    assert node_id_in({"subjectAltName": (("URI", "urn:allowhelp:node:../x"),)}) is None
    assert node_id_in({"subjectAltName": (("DNS", "urn:allowhelp:node:" + node),)}) is None
    assert node_id_in({}) is None and node_id_in(None) is None
    with pytest.raises(ValueError, match="not a node id"):
        issue_node_certificate(*ca, "not-an-id", tmp_path / "x.pem", tmp_path / "x.key")


async def test_a_renewed_node_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    """What the listener's daily renewal does: new files, loaded into the live contexts."""
    ca_pem, ca_key = _ca(tmp_path)
    node = "c" * 32
    credentials = NodeCredentials(ca_pem, tmp_path / "n.pem", tmp_path / "n.key")
    issue_node_certificate(ca_pem, ca_key, node, credentials.cert, credentials.key)
    server_context, client_context = credentials.server_context(), credentials.client_context()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]

    async def served() -> bytes:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    try:
        first = await served()
        issue_node_certificate(ca_pem, ca_key, node, credentials.cert, credentials.key)
        assert await served() == first  # the context holds what it loaded
        credentials.load_into(server_context)
        credentials.load_into(client_context)
        renewed = await served()
        assert renewed != first
        assert renewed == x509.load_pem_x509_certificate(
            credentials.cert.read_bytes()
        ).public_bytes(serialization.Encoding.DER)
    finally:
        server.close()
        await server.wait_closed()


async def test_of_three_nodes_the_one_holding_the_agent_serves_it(
    tmp_path: Path, pg_url: str
) -> None:
    with running_fleet(tmp_path, store=pg_url, broker_args=tuple(RELAY)) as (fleet, b, agent):
        a = _node(fleet, b, pg_url, "node-a")
        c = _node(fleet, b, pg_url, "node-c")
        desk = Desk.login(c, TECH, TECH_PW)
        session_id = await asyncio.to_thread(_asked_and_allowed, desk, agent)
        async with _terminal(desk, session_id) as term:
            await term.send("echo three-$((1+2))-nodes\n")
            await term.expect(b"three-3-nodes", timeout=30)
        relayed = [r for r in _records(pg_url, session_id) if r["type"] == "session.relayed"]
        assert [(r["details"]["from_node"], r["details"]["to_node"]) for r in relayed] == [
            (_node_id(c), _node_id(b))
        ]
        assert (b.data / "recordings" / f"{session_id}.cast").exists()
        assert not (a.data / "recordings" / f"{session_id}.cast").exists()
        assert desk.wait_state(session_id, "ended")["end_reason"] == "technician"
        desk.close()
    _verified(pg_url)


async def test_a_peer_that_is_not_the_node_meant_never_gets_the_cookie(tmp_path: Path) -> None:
    """The WebSocket relay checks the TLS peer is the node it meant to reach before its
    upgrade request, which carries the technician's cookie, is written: a holder of
    another node's certificate (same CA) at that address reads nothing. The same
    peer, when it is the node meant, does get the request (the control)."""
    ca_pem, ca_key = _ca(tmp_path)
    impostor = NodeCredentials(ca_pem, tmp_path / "i.pem", tmp_path / "i.key")
    issue_node_certificate(ca_pem, ca_key, "c" * 32, impostor.cert, impostor.key)
    ours = NodeCredentials(ca_pem, tmp_path / "o.pem", tmp_path / "o.key")
    issue_node_certificate(ca_pem, ca_key, "d" * 32, ours.cert, ours.key)
    heard = bytearray()
    cookie_heard = asyncio.Event()

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while chunk := await reader.read(4096):
                heard.extend(chunk)
                if b"the-technicians-secret" in heard:
                    cookie_heard.set()
        writer.close()

    server = await asyncio.start_server(listen, "127.0.0.1", 0, ssl=impostor.server_context())
    port = server.sockets[0].getsockname()[1]
    url = f"wss://127.0.0.1:{port}/api/v1/sessions/s-0123456789ab/terminal"
    cookie = {"cookie": "ah_session=the-technicians-secret"}

    async def dial(node_id: str, refused: list[AgentUnreachable], timeout: float) -> None:
        meant = PeerNode(node_id, f"127.0.0.1:{port}", f"https://127.0.0.1:{port}")
        with pytest.raises(Exception):  # noqa: B017 - websockets' own, whichever
            await connect(
                url,
                create_connection=_connection_to(meant, refused),
                ssl=ours.client_context(),
                additional_headers=cookie,
                open_timeout=timeout,
            )

    refused: list[AgentUnreachable] = []
    try:
        await dial("e" * 32, refused, 10)  # the node meant is another one
        control: list[AgentUnreachable] = []
        await dial("c" * 32, control, 1)  # the node meant: it hears the request, never answers
        await asyncio.wait_for(cookie_heard.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert refused and f"is not node {'e' * 32}" in str(refused[0])
    assert "c" * 32 in str(refused[0])  # who answered, said
    assert control == []
    assert heard.count(b"GET /api/v1/sessions/") == 1  # the control's alone
    assert heard.count(b"the-technicians-secret") == 1
