"""Fleet jobs in tests: machine services as root with or without the opt-in, an admin's desk.

Each PC is a real machine service (``run --system``, root) with its own
machine folder; ``opt_in`` writes the folder's ``policy.toml`` as the PC's
administrator would. Jobs go through the real broker's API.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from machinekit import Machine, enroll_system

from harness import Broker, Desk, agent_cli, broker_cli, wait_for


def opt_in(config: Path, allow: tuple[str, ...], apt_config: str = "") -> None:
    lines = ["[fleet]", "enabled = true", f"allow = {json.dumps(list(allow))}"]
    if apt_config:
        lines.append(f"apt_config = {json.dumps(apt_config)}")
    policy = config / "policy.toml"
    policy.write_text("\n".join(lines) + "\n")
    policy.chmod(0o600)


def enrolled_machine(broker: Broker, root: Path, name: str) -> Machine:
    return Machine(root, enroll_system(broker, root / name))


def online(desk: Desk, agent_id: str) -> bool:
    rows = desk.client.get("/api/v1/agents").json()
    return any(row["id"] == agent_id and row["online"] for row in rows)


def start(machine: Machine, desk: Desk) -> None:
    machine.start_service()
    wait_for(lambda: online(desk, machine.agent_id), 30, "the machine service to come online")


def stop(machine: Machine, desk: Desk) -> None:
    machine.stop()
    machine.service = None
    wait_for(lambda: not online(desk, machine.agent_id), 30, "the machine to go offline")


def job(desk: Desk, job_id: str) -> dict[str, Any]:
    answer = desk.client.get(f"/api/v1/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def create(desk: Desk, **body: Any) -> dict[str, Any]:
    answer = desk.client.post("/api/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


def result_of(desk: Desk, job_id: str, agent_id: str, timeout: float = 60) -> dict[str, Any]:
    """The PC's result once it is final."""

    def final() -> dict[str, Any] | None:
        for row in job(desk, job_id)["results"]:
            if row["agent_id"] == agent_id and row["state"] not in ("pending",):
                found: dict[str, Any] = row
                return found
        return None

    found: dict[str, Any] = wait_for(final, timeout, f"job {job_id} on {agent_id}", step=0.2)
    return found


def audit(broker: Broker) -> list[dict[str, Any]]:
    done = broker_cli("audit", "export", "--data", str(broker.data))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def history(machine: Machine) -> list[dict[str, Any]]:
    done = agent_cli("history", "--json", "--config", str(machine.config))
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def build_local_repo(root: Path, package: str, version: str = "1.0") -> Path:
    """A tiny .deb (dpkg-deb) in a flat apt repository (dpkg-scanpackages), and an
    apt configuration that sees only it, with its own lists and cache: no network,
    and the machine's own apt state untouched."""
    build = root / "build" / package
    (build / "DEBIAN").mkdir(parents=True)
    (build / "usr" / "share" / package).mkdir(parents=True)
    (build / "usr" / "share" / package / "hello").write_text("hello from a fleet job\n")
    (build / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: allowhelp tests <tests@example.invalid>\n"
        "Description: allowhelp fleet job test package\n"
    )
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(build), str(repo / f"{package}.deb")],
        check=True,
        capture_output=True,
    )
    scanned = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    (repo / "Packages").write_bytes(scanned.stdout)
    for name in ("lists/partial", "cache/archives/partial", "sources.d"):
        (root / "apt" / name).mkdir(parents=True)
    (root / "apt" / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    conf = root / "apt" / "apt.conf"
    conf.write_text(
        f'Dir::Etc::sourcelist "{root}/apt/sources.list";\n'
        f'Dir::Etc::sourceparts "{root}/apt/sources.d";\n'
        f'Dir::State::Lists "{root}/apt/lists";\n'
        f'Dir::Cache "{root}/apt/cache";\n'
        'Acquire::Languages "none";\n'
    )
    return conf
