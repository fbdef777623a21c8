"""``allowhelp-broker backup`` while a shell runs, then ``restore`` and a broker on it.

Real processes throughout: the broker and the agent of ``running_fleet``, a
consented shell driven over its terminal WebSocket, the backup and restore
commands as separate processes, and a second broker started on the restored
folder at the addresses the agent already knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import stat
import tarfile
from pathlib import Path
from typing import Any

import websockets

from harness import (
    ADMIN,
    ADMIN_PW,
    TECH,
    TECH_PW,
    Broker,
    Desk,
    broker_cli,
    online,
    running_fleet,
    wait_for,
)
from terminalkit import Terminal, consented_shell


def audit_records(data: Path) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def manifest_of(backup: Path) -> dict[str, Any]:
    with tarfile.open(backup, "r:*") as tar:
        names = tar.getnames()
        assert names[-1] == "manifest.json", names  # last: it vouches for all before it
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest: dict[str, Any] = json.loads(member.read())
    assert [f"data/{entry['path']}" for entry in manifest["files"]] == names[:-1]
    return manifest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_backup_of_a_live_broker_restores_and_the_fleet_comes_back(tmp_path: Path) -> None:
    backup = tmp_path / "backups" / "broker.tar.gz"
    backup.parent.mkdir(mode=0o700)
    restored = tmp_path / "restored"
    with running_fleet(tmp_path) as (fleet, broker, agent):
        desk = await asyncio.to_thread(Desk.login, broker, TECH, TECH_PW)
        session_id = await asyncio.to_thread(consented_shell, desk, agent)
        async with websockets.connect(
            desk.ws_url(session_id) + "?cols=100&rows=30",
            ssl=broker.ssl_context(),
            origin=broker.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": desk.cookie_header()},
        ) as ws:
            term = Terminal(ws)
            await term.send("echo before-backup-$((6*7))\n")
            await term.expect(b"before-backup-42")
            # The backup is its own process while the shell and its recording go on.
            done = await asyncio.to_thread(
                broker_cli, "backup", "--data", str(broker.data), "--output", str(backup)
            )
            assert done.returncode == 0, done.stderr
            assert done.stderr == "", done.stderr  # a private folder: no warning
            lines = done.stdout.splitlines()
            assert lines[0].startswith(f"backup written: {backup} (")
            assert "1 session(s) were live" in lines[-1]
            await term.send("echo after-backup-$((6*7))\n")  # the shell was not disturbed
            await term.expect(b"after-backup-42")
            assert mode(backup) == 0o600
            assert not backup.with_name(backup.name + ".partial").exists()
            assert sorted(p.name for p in backup.parent.iterdir()) == [backup.name]
            await asyncio.to_thread(broker.stop)  # the live session ends in the old broker
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
        await asyncio.to_thread(desk.close)

        manifest = manifest_of(backup)
        assert manifest["format"] == "allowhelp-broker-backup" and manifest["format_version"] == 1
        assert manifest["open_sessions"] == [session_id]
        files = {entry["path"]: entry for entry in manifest["files"]}
        assert {"ca.key", "ca.pem", "tls.key", "tls.pem", "tunnel_key"} <= set(files)
        assert {"broker.sqlite3", "audit.sqlite3", "broker.json"} <= set(files)
        assert f"recordings/{session_id}.cast" in files
        for name in ("ca.key", "ca.pem", "tunnel_key"):  # the pinned keys, byte for byte
            digest = hashlib.sha256((broker.data / name).read_bytes()).hexdigest()
            assert files[name]["sha256"] == digest
        # The backup audited itself before the snapshot: its record is the head it holds.
        source = audit_records(broker.data)
        backup_record = next(r for r in source if r["type"] == "broker.backup")
        assert backup_record["code"] == "AH1906" and backup_record["target"] == str(backup)
        seq, digest = manifest["audit_head"].split(":")
        assert int(seq) >= backup_record["seq"]
        assert next(r for r in source if r["seq"] == int(seq))["hash"] == digest

        done = await asyncio.to_thread(broker_cli, "restore", str(backup), "--data", str(restored))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].startswith(f"audit log intact: {seq} records,")
        assert mode(restored) == 0o700 and mode(restored / "recordings") == 0o700
        assert all(mode(p) == 0o600 for p in restored.rglob("*") if p.is_file())
        assert [p.name for p in tmp_path.iterdir() if ".restoring-" in p.name] == []
        verified = await asyncio.to_thread(broker_cli, "audit", "verify", "--data", str(restored))
        assert verified.returncode == 0, verified.stdout + verified.stderr

        # A broker on the restored folder, where the agent dials: it comes back by itself.
        again = Broker(restored, https=broker.https, tunnel=broker.tunnel)
        fleet.brokers.append(again)
        await asyncio.to_thread(again.start)
        await asyncio.to_thread(
            wait_for, lambda: online(again, agent.agent_id), 30, "the agent back online"
        )
        assert agent.proc is not None and agent.proc.poll() is None  # the same agent process
        records = audit_records(restored)
        assert [r["type"] for r in records].count("agent.enrolled") == 1  # never re-enrolled
        restored_record = next(r for r in records if r["type"] == "broker.restored")
        assert restored_record["seq"] == int(seq) + 1
        assert restored_record["details"]["head"] == manifest["audit_head"]
        ended = [r for r in records if r["type"] == "session.ended" and r["target"] == session_id]
        assert len(ended) == 1 and ended[0]["seq"] > restored_record["seq"], ended
        details = ended[0]["details"]
        assert details["end_reason"] == "broker_restart" and details["recording_recovered"]
        cast = (restored / "recordings" / f"{session_id}.cast").read_bytes()
        assert b"before-backup-42" in cast
        assert details["recording_sha256"] == hashlib.sha256(cast).hexdigest()
        admin = await asyncio.to_thread(Desk.login, again, ADMIN, ADMIN_PW)
        try:
            seen = await asyncio.to_thread(admin.session, session_id)
            assert (seen["state"], seen["end_reason"]) == ("ended", "broker_restart")
            replay = await asyncio.to_thread(
                admin.client.get, f"/api/v1/sessions/{session_id}/recording"
            )
            assert replay.status_code == 200 and replay.content == cast
        finally:
            await asyncio.to_thread(admin.close)
