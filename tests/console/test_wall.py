"""The web wall, tried from outside: Origin on WebSockets, CSRF, headers, paths, sizes,
slow and bloated request heads, cookies after logout, and one technician on another's
session. Real broker and agent processes; httpx, websockets and raw TLS sockets."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from allowhelp.broker.console.httpguard import LIMITS
from harness import TECH, TECH_PW, Broker, Fleet, online, wait_for
from wallkit import Console, raw_request, raw_tls, ws_connect

TECH_B, TECH_B_PW = "bob", "bob password 1234"
EVENTS = "/api/v1/events"
PYPROJECT_MARK = b"[build-system]"


@pytest.fixture(scope="module")
def fleet(staffed: Fleet) -> Fleet:
    staffed.brokers[0].add_user(TECH_B, TECH_B_PW)
    return staffed


@pytest.fixture
def alice(broker: Broker) -> Iterator[Console]:
    console = Console.login(broker, TECH, TECH_PW)
    yield console
    console.close()


def refused_status(broker: Broker, origin: str | None, cookie: str | None) -> int:
    async def attempt() -> int:
        try:
            ws = await ws_connect(broker, EVENTS, origin=origin, cookie=cookie)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    return asyncio.run(attempt())


def test_events_socket_needs_the_exact_origin_and_a_cookie(broker: Broker, alice: Console) -> None:
    cookie = alice.cookie
    assert refused_status(broker, None, cookie) == 403  # no Origin at all
    for foreign in (
        "https://evil.example",
        "null",
        broker.url + ".evil.example",
        broker.url.replace("https://", "http://"),
        broker.url + "/",
        broker.url.replace("localhost", "127.0.0.1"),
    ):
        assert refused_status(broker, foreign, cookie) == 403, foreign
    assert refused_status(broker, broker.url, None) == 403  # right Origin, no cookie
    assert refused_status(broker, broker.url, "forged-cookie-value") == 403

    async def welcome() -> dict[str, Any]:
        ws = await ws_connect(broker, EVENTS, origin=broker.url, cookie=cookie)
        async with ws:
            hello: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return hello

    assert asyncio.run(welcome()) == {"type": "hello", "user": TECH, "role": "technician"}


def test_a_websocket_to_no_route_is_walled_too(broker: Broker, alice: Console) -> None:
    """The session sockets are tried on live sessions in tests/console/test_wall_sessions.py."""

    async def attempt(path: str) -> int:
        try:
            ws = await ws_connect(broker, path, origin="https://evil.example", cookie=alice.cookie)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    assert asyncio.run(attempt("/nothing")) == 403


def test_logout_kills_the_cookie_and_the_open_socket(broker: Broker) -> None:
    console = Console.login(broker, TECH, TECH_PW)
    cookie = console.cookie

    async def scenario() -> int:
        ws = await ws_connect(broker, EVENTS, origin=broker.url, cookie=cookie)
        await asyncio.wait_for(ws.recv(), 10)  # hello
        out = await asyncio.to_thread(console.post, "/api/v1/logout")
        assert out.status_code == 200
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code is not None
        return ws.close_code

    assert asyncio.run(scenario()) == 1008
    console.close()
    with broker.sync_client() as replay:
        replay.cookies.set("__Host-allowhelp", cookie)
        assert replay.get("/api/v1/me").status_code == 401
        assert replay.get("/api/v1/agents").status_code == 401
    assert refused_status(broker, broker.url, cookie) == 403


def test_login_rotates_the_cookie(broker: Broker) -> None:
    console = Console.login(broker, TECH, TECH_PW)
    first = console.cookie
    again = console.post("/api/v1/login", json={"username": TECH, "password": TECH_PW})
    assert again.status_code == 200 and console.cookie != first
    with broker.sync_client() as replay:
        replay.cookies.set("__Host-allowhelp", first)
        assert replay.get("/api/v1/me").status_code == 401  # the old id is gone
    console.close()


def test_state_changes_need_the_csrf_token(broker: Broker, alice: Console) -> None:
    alice.client.headers.pop("X-CSRF-Token")
    for method, path in (
        ("POST", "/api/v1/logout"),
        ("POST", "/api/v1/sessions"),
        ("POST", "/api/v1/sessions/abc/end"),
        ("POST", "/api/v1/totp/setup"),
        ("POST", "/api/v1/totp/confirm"),
    ):
        answer = alice.client.request(method, path, json={})
        assert answer.status_code == 403 and answer.json()["error"] == "csrf", path
    wrong = alice.client.post("/api/v1/totp/setup", headers={"X-CSRF-Token": "A" * 43})
    assert wrong.status_code == 403
    assert alice.get("/api/v1/me").status_code == 200


def test_security_headers_everywhere(broker: Broker, alice: Console) -> None:
    for path in (
        "/",
        "/index.html",
        "/js/pages/console.js",
        "/style.css",
        "/nothing-here",
        "/api/v1/me",
    ):
        answer = alice.get(path)
        headers = answer.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["x-frame-options"] == "DENY"
        if path.startswith("/api/"):
            assert headers["cache-control"] == "no-store"
    assert alice.get("/js/pages/console.js").headers["content-type"].startswith("text/javascript")


WEB = Path(__file__).resolve().parents[2] / "web"
INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle\s*=|\son[a-z]+\s*=", re.I)
MARKUP_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
)


def console_files(suffix: str) -> list[Path]:
    return [
        path
        for path in WEB.rglob(f"*{suffix}")
        if "node_modules" not in path.parts and "vendor" not in path.parts
    ]


def test_pages_have_no_inline_script_style_or_markup_sinks(alice: Console) -> None:
    pages = console_files(".html")
    assert pages, "no console pages found"
    for page in pages:
        assert not INLINE.search(page.read_text()), page
    scripts = console_files(".js")
    assert len(scripts) >= 5
    for script in scripts:
        assert not MARKUP_SINKS.search(script.read_text()), script
    served = alice.get("/").text
    assert (
        not INLINE.search(served) and '<script type="module" src="/js/pages/console.js">' in served
    )


@pytest.mark.parametrize(
    "target",
    [
        "/../pyproject.toml",
        "/static/../../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/....//pyproject.toml",
        "//etc/passwd",
        "/package.json",
        "/.gitignore",
        "/node_modules/.package-lock.json",
        "/node_modules/some-package/index.js",
        "/web/index.html",
    ],
)
def test_paths_outside_the_console_are_not_served(broker: Broker, target: str) -> None:
    answer = raw_request(
        broker, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    status = answer.split(b" ", 2)[1]
    assert status in (b"400", b"404"), answer[:200]
    assert PYPROJECT_MARK not in answer and b"root:" not in answer


def test_request_bodies_are_capped(alice: Console) -> None:
    big = alice.post("/api/v1/login", content=b"{" + b" " * (70 * 1024) + b"}")
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    chunked = alice.post("/api/v1/totp/confirm", content=chunks())
    assert chunked.status_code == 413


def test_a_trickled_request_head_is_cut_off(broker: Broker) -> None:
    """One deadline for the whole head, counted from the connection: a header every
    0.25 s never moves it. Timed from before connecting, so the lower bound holds
    whatever the load; the upper one only says the trickle did not extend it
    (a per-line deadline would never fire), with room for a busy machine."""
    started = time.monotonic()
    give_up = started + LIMITS.header_timeout * 2 + 5
    answer = b""
    with raw_tls(broker) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        i = 0
        while time.monotonic() < give_up:
            try:
                conn.sendall(b"X-Slow-%d: y\r\n" % i)  # one header every 0.25 s, never the end
            except OSError:
                break
            i += 1
            conn.settimeout(0.25)
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            answer += data
            break  # an answer, or b"" when the server closed
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert elapsed >= LIMITS.header_timeout, elapsed  # never before the deadline


def test_an_oversized_request_head_is_refused(broker: Broker) -> None:
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n"
    answer = raw_request(broker, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_a_streamed_endless_header_is_refused_for_its_size(broker: Broker) -> None:
    """Refused once it is too big, not when the deadline comes: 431, never 408."""
    with raw_tls(broker) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
        answer = b""
        for _ in range(64):
            try:
                conn.sendall(b"a" * 1024)
            except OSError:
                break
            conn.settimeout(0.05)
            try:
                answer += conn.recv(4096)
                break
            except TimeoutError:
                continue
        conn.settimeout(5)
        answer += b"" if answer else conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_oversized_websocket_messages_close_with_1009(broker: Broker, alice: Console) -> None:
    async def send(size: int) -> int | None:
        ws = await ws_connect(broker, EVENTS, origin=broker.url, cookie=alice.cookie, max_size=None)
        await asyncio.wait_for(ws.recv(), 10)  # hello
        await ws.send("x" * size)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code

    assert asyncio.run(send(8 * 1024)) == 1009  # over the events socket's own limit
    assert asyncio.run(send(2 * 1024 * 1024)) == 1009  # over the server-wide frame limit


async def next_of(ws: ClientConnection, kind: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} event within {timeout} s")
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), left))
        if event["type"] == kind:
            return event


def test_agents_come_online_live_and_sessions_reach_only_their_owner(
    fleet: Fleet, broker: Broker
) -> None:
    alice, bob = Console.login(broker, TECH, TECH_PW), Console.login(broker, TECH_B, TECH_B_PW)
    agent = fleet.agent("pc")
    assert agent.enroll(broker.token()).returncode == 0

    async def scenario() -> dict[str, Any]:
        a = await ws_connect(broker, EVENTS, origin=broker.url, cookie=alice.cookie)
        b = await ws_connect(broker, EVENTS, origin=broker.url, cookie=bob.cookie)
        async with a, b:
            await asyncio.to_thread(agent.start, "--reconnect-cap", "2")
            came = await next_of(a, "agent")
            assert came["agent"]["id"] == agent.agent_id and came["agent"]["online"] is True
            await next_of(b, "agent")  # everyone sees the fleet
            made = await asyncio.to_thread(
                alice.post,
                "/api/v1/sessions",
                json={"agent_id": agent.agent_id, "kind": "shell", "reason": "printer"},
            )
            assert made.status_code == 201, made.text
            mine = await next_of(a, "session")
            assert mine["session"]["id"] == made.json()["id"]
            with pytest.raises(TimeoutError):
                await next_of(b, "session", timeout=1.5)  # not bob's business
            return dict(made.json())

    session = asyncio.run(scenario())
    assert online(broker, agent.agent_id)
    sid = session["id"]
    assert bob.get(f"/api/v1/sessions/{sid}").status_code == 404
    assert bob.post(f"/api/v1/sessions/{sid}/end").status_code == 404
    assert sid not in [s["id"] for s in bob.get("/api/v1/sessions").json()]
    assert alice.get(f"/api/v1/sessions/{sid}").json()["technician"] == TECH

    async def bob_attaches() -> int:
        try:
            ws = await ws_connect(
                broker, f"/api/v1/sessions/{sid}/terminal", origin=broker.url, cookie=bob.cookie
            )
        except InvalidStatus as exc:
            return exc.response.status_code
        async with ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code or 0

    # Refused before accepting (HTTP 403), here on a session still awaiting consent;
    # on an active one, by ownership alone: tests/console/test_wall_sessions.py.
    assert asyncio.run(bob_attaches()) == 403
    assert alice.post(f"/api/v1/sessions/{sid}/end").status_code == 200
    alice.close()
    bob.close()
    agent.stop()
    wait_for(lambda: not online(broker, agent.agent_id), 20, "the agent to go offline")
