"""A locked ``broker.sqlite3`` stalls only what needs it: a real lock, taken by a second process.

Another process holds ``BEGIN EXCLUSIVE`` on the broker's store (as a backup
tool or a stuck admin shell would) for about ten seconds. Meanwhile a live
shell's echo stays fast (the store runs on threads of its own, never on the
event loop), the agent list keeps answering (its queries run on the store's
reader, which WAL mode does not block), and the two things that must write
are refused with 503 ``store_unavailable``, without leaving the chain saying
otherwise: a login gets ``auth.login.aborted`` after its ``auth.login.ok``,
and a session request ends on the record at once and is listed nowhere. Once
the lock goes, the same broker process works again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from allowhelp.broker.errors import StoreError
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    broker_cli,
    log_mark,
    log_since,
    running_fleet,
)
from terminalkit import Terminal, consented_shell

HOLD_MIN = 8.0  # seconds the lock is held at least (the broker's busy wait is 5 s)
HOLD_MAX = 20.0  # and at most: the refused calls answer well before
ECHO_BOUND = 0.5  # generous: the same round trip takes milliseconds unlocked

# Holds the write lock until its stdin closes. WAL mode: readers still read.
_HOLD_STORE_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
    "conn.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    with running_fleet(tmp_path_factory.mktemp("locked_store")) as (_, broker, agent):
        yield broker, agent


@asynccontextmanager
async def store_locked(broker: Broker) -> AsyncIterator[None]:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_STORE_LOCK,
        str(broker.data / "broker.sqlite3"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line == b"locked\n", "the store's lock was not taken"
        yield
    finally:
        holder.stdin.close()
        try:
            await asyncio.wait_for(holder.wait(), 10)
        except TimeoutError:
            holder.kill()
            await holder.wait()


async def echo_time(term: Terminal, tag: str) -> float:
    """Seconds from typing ``tag`` to seeing it echoed back by the PC's terminal."""
    start = time.monotonic()
    await term.send(f": {tag}\n")
    await term.expect(tag.encode(), timeout=15)
    return time.monotonic() - start


def audit_after(broker: Broker, seq: int) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data), "--after", str(seq))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def audit_seq(broker: Broker) -> int:
    done = broker_cli("audit", "head", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().partition(":")[0])


async def login(broker: Broker, user: str, password: str) -> tuple[httpx.Response, float]:
    async with broker.client() as client:
        start = time.monotonic()
        answer = await client.post("/api/v1/login", json={"username": user, "password": password})
        return answer, time.monotonic() - start


async def test_a_locked_store_stalls_only_what_must_write(setup: tuple[Broker, Agent]) -> None:
    broker, agent = setup
    desk = Desk.login(broker, TECH, TECH_PW)
    lister = broker.client()
    try:
        assert (
            await lister.post("/api/v1/login", json={"username": TECH, "password": TECH_PW})
        ).status_code == 200
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with websockets.connect(
            desk.ws_url(session_id) + "?cols=100&rows=30",
            ssl=broker.ssl_context(),
            origin=broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            term = Terminal(ws)
            await term.send("echo shell-$((6*7))\n")
            await term.expect(b"shell-42", timeout=30)
            unlocked = [await echo_time(term, f"before{i}x") for i in range(5)]
            listed_before = {s["id"] for s in desk.client.get("/api/v1/sessions").json()}
            seq, mark = audit_seq(broker), log_mark(broker.log)

            echoes: list[float] = []
            answers: list[tuple[int, str, float]] = []  # status, error code, seconds
            done = asyncio.Event()

            async def sample_echo() -> None:
                n = 0
                while not done.is_set():
                    echoes.append(await echo_time(term, f"locked{n}x"))
                    n += 1
                    await asyncio.sleep(0.2)

            async def list_agents() -> None:
                while not done.is_set():
                    start = time.monotonic()
                    answer = await lister.get("/api/v1/agents")
                    error = "" if answer.status_code == 200 else answer.json().get("error", "")
                    answers.append((answer.status_code, error, time.monotonic() - start))
                    await asyncio.sleep(0.1)

            async with store_locked(broker):
                locked_at = time.monotonic()
                samplers = [asyncio.create_task(sample_echo()), asyncio.create_task(list_agents())]
                refused_login = asyncio.create_task(login(broker, ADMIN, ADMIN_PW))
                refused_request = asyncio.create_task(
                    asyncio.to_thread(desk.request, agent.agent_id, reason="while locked")
                )
                await asyncio.wait_for(asyncio.gather(refused_login, refused_request), HOLD_MAX)
                await asyncio.sleep(max(0.0, HOLD_MIN - (time.monotonic() - locked_at)))
                done.set()
                await asyncio.wait_for(asyncio.gather(*samplers), 20)
                held = time.monotonic() - locked_at
            login_answer, login_seconds = refused_login.result()
            request_answer = refused_request.result()

            # After the lock: the same process works again, the shell went on.
            relieved = [await echo_time(term, f"after{i}x") for i in range(3)]
            later, _ = await login(broker, ADMIN, ADMIN_PW)
            agents_after = await lister.get("/api/v1/agents")
            fresh = await asyncio.to_thread(desk.request, agent.agent_id, reason="after the lock")
            listed = desk.client.get("/api/v1/sessions").json()
            if fresh.status_code == 201:
                desk.client.post(f"/api/v1/sessions/{fresh.json()['id']}/end")
            await term.send(": still here\n")
            await term.expect(b"still here")

        figures = {
            "held_s": round(held, 2),
            "echo_unlocked_max_ms": round(1000 * max(unlocked), 1),
            "echo_locked_n": len(echoes),
            "echo_locked_max_ms": round(1000 * max(echoes), 1),
            "echo_locked_median_ms": round(1000 * sorted(echoes)[len(echoes) // 2], 1),
            "agent_list_n": len(answers),
            "agent_list_statuses": sorted({a[0] for a in answers}),
            "agent_list_max_ms": round(1000 * max(a[2] for a in answers), 1),
            "login_status": login_answer.status_code,
            "login_s": round(login_seconds, 2),
            "request_status": request_answer.status_code,
        }
        print("locked store:", json.dumps(figures))

        # (a) the live shell did not notice
        assert len(echoes) >= 10 and max(echoes) < ECHO_BOUND, figures
        # (b) the agent list answered all along: 200, or a clean 503, never a 500
        assert len(answers) >= 10, figures
        for status, error, _ in answers:
            assert status == 200 or (status == 503 and error == "store_unavailable"), answers
        # (c) the login was refused, and the chain says so after its "ok"
        assert login_answer.status_code == 503, login_answer.text
        assert login_answer.json()["error"] == "store_unavailable"
        records = audit_after(broker, seq)
        admin_logins = [
            r for r in records if r["target"] == ADMIN and r["type"].startswith("auth.login.")
        ]
        kinds = [r["type"] for r in admin_logins]
        assert kinds[:2] == ["auth.login.ok", "auth.login.aborted"], kinds
        assert admin_logins[1]["details"]["reason"] == "store_unavailable"
        # (d) the session request was refused, ended on the record, and is listed nowhere
        assert request_answer.status_code == 503, request_answer.text
        assert request_answer.json()["error"] == "store_unavailable"
        locked_requests = [
            r
            for r in records
            if r["type"] == "session.requested" and r["details"]["reason"] == "while locked"
        ]
        assert len(locked_requests) == 1, locked_requests
        refused_id = locked_requests[0]["target"]
        ends = [r for r in records if r["type"] == "session.ended" and r["target"] == refused_id]
        assert len(ends) == 1 and ends[0]["details"]["end_reason"] == "error", ends
        assert ends[0]["details"]["error"] == "the broker database is unavailable"
        listed_ids = {s["id"] for s in listed}
        assert refused_id not in listed_ids
        assert desk.client.get(f"/api/v1/sessions/{refused_id}").status_code == 404
        assert listed_ids - listed_before <= {fresh.json().get("id")}
        # (e) everything works again, without a restart
        assert max(relieved) < ECHO_BOUND, relieved
        assert later.status_code == 200, later.text
        assert agents_after.status_code == 200 and agents_after.json()[0]["online"]
        assert fresh.status_code == 201, fresh.text
        assert broker.proc is not None and broker.proc.poll() is None
        assert "Traceback" not in log_since(broker.log, mark)
    finally:
        await lister.aclose()
        desk.close()


async def test_the_reader_lane_refuses_writes_and_reads_under_a_write_lock(
    tmp_path: Path,
) -> None:
    """``read`` is for queries only (a write sent there fails, so a wrong lane
    shows), and it answers while another connection holds the write lock."""
    path = tmp_path / "broker.sqlite3"
    worker = await StoreWorker.open(path)
    try:
        with pytest.raises(StoreError):
            await worker.read(Store.set_policy, "require_totp", "1")
        await worker.run(Store.set_policy, "require_totp", "1")
        with closing(sqlite3.connect(path, isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            start = time.monotonic()
            assert await worker.read(Store.policy, "require_totp") == "1"
            assert time.monotonic() - start < 1.0
            holder.execute("ROLLBACK")
    finally:
        await worker.close()
    with pytest.raises(StoreError, match="closed"):
        await worker.read(Store.policy, "require_totp")
