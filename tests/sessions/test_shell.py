"""A consented shell through a real broker and agent, driven over the terminal WebSocket."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    broker_cli,
    running_fleet,
)
from terminalkit import Terminal, consented_shell


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("shell")) as (_, broker, agent):
        yield broker, agent


@pytest.fixture
def desk(setup: tuple[Broker, Agent]) -> Iterator[Desk]:
    desk = Desk.login(setup[0], TECH, TECH_PW)
    yield desk
    desk.close()


@pytest.fixture
async def terminal(setup: tuple[Broker, Agent], desk: Desk) -> AsyncIterator[tuple[Terminal, str]]:
    session_id = await asyncio.to_thread(consented_shell, desk, setup[1])
    async with websockets.connect(
        desk.ws_url(session_id) + "?cols=100&rows=30",
        ssl=desk.broker.ssl_context(),
        origin=desk.broker.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": desk.cookie_header()},
        max_size=2**22,
    ) as ws:
        yield Terminal(ws), session_id


async def test_type_a_command_and_read_its_output(terminal: tuple[Terminal, str]) -> None:
    term, _ = terminal
    await term.send("echo hello-$((20+22)) ünïcødé\n")
    seen = await term.expect(b"hello-42")
    assert "ünïcødé".encode() in seen
    await term.send("echo $TERM\n")
    await term.expect(b"xterm-256color")


async def test_resize_changes_stty_size(terminal: tuple[Terminal, str]) -> None:
    term, _ = terminal
    await term.send("stty size\n")
    await term.expect(b"30 100")
    await term.ws.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
    await term.send("stty size\n")
    await term.expect(b"43 132")
    await term.ws.send(json.dumps({"type": "resize", "cols": 10**9, "rows": -5}))
    await term.send("stty size\n")
    await term.expect(b"1 1000")  # clamped, not crashed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_ctrl_c_stops_a_flood_and_memory_stays_bounded(
    setup: tuple[Broker, Agent], terminal: tuple[Terminal, str]
) -> None:
    broker, agent = setup
    term, _ = terminal
    assert broker.proc is not None and agent.proc is not None
    before = rss_kib(broker.proc.pid), rss_kib(agent.proc.pid)
    await term.send("yes allowhelp-flood\n")
    await term.expect(b"allowhelp-flood\r\nallowhelp-flood")
    # A slow reader: the flood must wait for us, not pile up in the broker or agent.
    await asyncio.sleep(3)
    after = rss_kib(broker.proc.pid), rss_kib(agent.proc.pid)
    assert after[0] - before[0] < 40_000, (before, after)
    assert after[1] - before[1] < 40_000, (before, after)
    await term.ws.send(b"\x03")
    await term.send("echo stopped-$((1+1))\n")
    await term.expect(b"stopped-2", timeout=20)


async def test_shell_exit_ends_the_session(
    setup: tuple[Broker, Agent], desk: Desk, terminal: tuple[Terminal, str]
) -> None:
    term, session_id = terminal
    await term.send("echo bye-bye; exit\n")
    await term.expect(b"bye-bye")
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(term.expect(b"never"), 10)
    ended = await asyncio.to_thread(desk.wait_state, session_id, "ended")
    assert ended["end_reason"] == "shell_exited"
    assert ended["bytes_from_agent"] > 0 and ended["bytes_to_agent"] > 0


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_recording_replays_and_matches_the_audit(
    setup: tuple[Broker, Agent], desk: Desk, terminal: tuple[Terminal, str]
) -> None:
    broker, _ = setup
    term, session_id = terminal
    await term.send("echo recorded-$((3*3))\n")
    await term.expect(b"recorded-9")
    await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")
    ended = next(
        r
        for r in audit_records(broker)
        if r["type"] == "session.ended" and r["target"] == session_id
    )
    digest = ended["details"]["recording_sha256"]
    assert ended["details"]["end_reason"] == "technician"
    assert desk.client.get(f"/api/v1/sessions/{session_id}/recording").status_code == 403
    admin = Desk.login(broker, ADMIN, ADMIN_PW)
    try:
        cast = admin.client.get(f"/api/v1/sessions/{session_id}/recording")
        assert cast.status_code == 200
        assert hashlib.sha256(cast.content).hexdigest() == digest
        replayed = [
            r
            for r in audit_records(broker)
            if r["type"] == "session.replayed" and r["target"] == session_id
        ]
        assert replayed and replayed[0]["actor"] == f"admin:{ADMIN}"
        lines = cast.content.decode().splitlines()
        header = json.loads(lines[0])
        assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
        output = "".join(json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "o")
        assert "recorded-9" in output
        # Tampering with the file is noticed.
        path = broker.data / "recordings" / f"{session_id}.cast"
        path.write_bytes(path.read_bytes().replace(b"recorded-9", b"recorded-8"))
        assert admin.client.get(f"/api/v1/sessions/{session_id}/recording").status_code == 409
    finally:
        admin.close()


async def test_foreign_origin_and_other_users_cannot_attach(
    setup: tuple[Broker, Agent], desk: Desk
) -> None:
    broker, agent = setup
    session_id = await asyncio.to_thread(consented_shell, desk, agent)
    url = desk.ws_url(session_id)
    for origin, cookie in (
        ("https://evil.example", desk.cookie_header()),
        (None, desk.cookie_header()),
        (broker.url, ""),
    ):
        headers = {"Cookie": cookie} if cookie else {}
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(
                url,
                ssl=broker.ssl_context(),
                origin=origin,  # type: ignore[arg-type]
                additional_headers=headers,
            ):
                pass
    admin = await asyncio.to_thread(Desk.login, broker, ADMIN, ADMIN_PW)
    try:
        with pytest.raises(websockets.InvalidStatus):  # consent named alice, not the admin
            async with websockets.connect(
                url,
                ssl=broker.ssl_context(),
                origin=broker.url,  # type: ignore[arg-type]
                additional_headers={"Cookie": admin.cookie_header()},
            ):
                pass
    finally:
        admin.close()
    await asyncio.to_thread(desk.client.post, f"/api/v1/sessions/{session_id}/end")


async def test_a_second_tab_is_refused_and_the_first_goes_on(
    desk: Desk, terminal: tuple[Terminal, str]
) -> None:
    term, session_id = terminal
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            desk.ws_url(session_id),
            ssl=desk.broker.ssl_context(),
            origin=desk.broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ):
            pass
    await term.send("echo still-here-$((5+5))\n")
    await term.expect(b"still-here-10")
    assert (await asyncio.to_thread(desk.session, session_id))["state"] == "active"


def ended_record(broker: Broker, session_id: str) -> dict[str, Any]:
    return next(
        r
        for r in audit_records(broker)
        if r["type"] == "session.ended" and r["target"] == session_id
    )


@pytest.mark.parametrize(
    "control",
    ["[" * 3000, '{"type": "resize", "cols": ' + "[" * 2000, '{"type": "paste", "text": "x"}'],
)
async def test_a_broken_control_message_fails_the_session_plainly(
    setup: tuple[Broker, Agent], desk: Desk, terminal: tuple[Terminal, str], control: str
) -> None:
    broker, _ = setup
    term, session_id = terminal
    await term.ws.send(control)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(term.expect(b"never"), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "bad control message" in closed.value.rcvd.reason
    ended = await asyncio.to_thread(desk.wait_state, session_id, "ended")
    assert ended["end_reason"] == "error"
    failed = [
        r
        for r in audit_records(broker)
        if r["type"] == "session.failed" and r["target"] == session_id
    ]
    assert failed and "bad control message" in failed[0]["details"]["error"]
    assert "Traceback" not in Path(broker.log).read_text()


async def test_the_technician_leaving_ends_as_the_technician(
    setup: tuple[Broker, Agent], desk: Desk, terminal: tuple[Terminal, str]
) -> None:
    broker, _ = setup
    term, session_id = terminal
    await term.send("echo leaving\n")
    await term.expect(b"leaving")
    await term.ws.close()
    await asyncio.to_thread(desk.wait_state, session_id, "ended")
    record = ended_record(broker, session_id)
    assert record["details"]["end_reason"] == "technician"
    assert record["actor"] == f"technician:{TECH}"


async def test_the_user_ending_ends_as_the_user_of_that_machine(
    setup: tuple[Broker, Agent], desk: Desk, terminal: tuple[Terminal, str]
) -> None:
    broker, agent = setup
    term, session_id = terminal
    await term.send("echo before-the-end\n")
    await term.expect(b"before-the-end")
    assert agent_call(agent, "end", session_id).returncode == 0
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(term.expect(b"never"), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    await asyncio.to_thread(desk.wait_state, session_id, "ended")
    record = ended_record(broker, session_id)
    assert record["details"]["end_reason"] == "user"
    assert record["actor"] == f"user@{agent.agent_id}"
