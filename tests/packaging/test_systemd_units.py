"""The systemd units and the autostart entry in packaging/, checked by systemd's own tools.

``systemd-analyze verify`` loads each unit as systemd would (no systemd needs to
run); with ``--root`` it looks for the programs a unit starts in a scratch root
that has them, so the units are checked with their real /usr/bin paths.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from debkit import REPO

UNITS = REPO / "packaging" / "systemd"
SYSTEM_UNITS = (
    "allowhelp-broker.service",
    "allowhelp-agent.service",
    "allowhelp-agent-enroll.service",
)
USER_UNIT = "allowhelp-agent-session.service"
HOST_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir(),
    reason="systemd-analyze and systemd's own units are needed (Debian: apt-get install systemd)",
)


def exec_paths(unit: str) -> set[str]:
    found = set()
    for line in unit.splitlines():
        match = re.match(r"Exec\w+=[-@:+!]*(\S+)", line)
        if match:
            found.add(match[1] if match[1].startswith("/") else f"/usr/bin/{match[1]}")
    return found


def scratch_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """systemd's own unit files, ours, and an executable at every path ours start."""
    root = tmp_path / "root"
    system = root / "usr/lib/systemd/system"
    system.mkdir(parents=True)
    for item in HOST_UNITS.iterdir():  # targets and services ours name (network-online, ...)
        if item.is_file() and not item.is_symlink():
            shutil.copyfile(item, system / item.name)
    for name, text in units.items():
        (system / name).write_text(text)
        for path in exec_paths(text):
            program = root / path.lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    (root / "etc").mkdir()
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shipped() -> dict[str, str]:
    return {name: (UNITS / name).read_text() for name in SYSTEM_UNITS}


def test_system_units_verify_clean(tmp_path: Path) -> None:
    done = verify(scratch_root(tmp_path, shipped()), *SYSTEM_UNITS)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in a setting is reported."""
    units = shipped()
    units["allowhelp-broker.service"] = units["allowhelp-broker.service"].replace(
        "Restart=on-failure", "Restart=sometimes"
    )
    done = verify(scratch_root(tmp_path, units), "allowhelp-broker.service")
    assert "Failed to parse service restart specifier" in done.stderr


def test_user_unit_verifies_clean(tmp_path: Path) -> None:
    """`--user --root` is not supported: the unit is checked with its program moved here."""
    program = tmp_path / "allowhelp-agent"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = (UNITS / USER_UNIT).read_text()
    assert exec_paths(text) == {"/usr/bin/allowhelp-agent"}
    unit = tmp_path / USER_UNIT
    unit.write_text(text.replace("/usr/bin/allowhelp-agent", str(program)))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""
    assert "WantedBy=graphical-session.target" in text


def test_broker_sandbox_is_rated_ok(tmp_path: Path) -> None:
    """systemd's own exposure score, offline: 'OK' is below 4.0; ours must stay under 2."""
    root = scratch_root(tmp_path, shipped())
    done = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={root}",
            "--no-pager",
            "allowhelp-broker.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for allowhelp-broker.service: ([\d.]+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score[1]) < 2.0, done.stdout


def test_broker_unit_settings() -> None:
    text = (UNITS / "allowhelp-broker.service").read_text()
    for line in (
        "User=allowhelp",
        "StateDirectory=allowhelp/broker",
        "LimitNOFILE=65536",
        "EnvironmentFile=-/etc/default/allowhelp-broker",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{line}\n" in text, line
    assert "ExecStart=/usr/bin/allowhelp-broker serve --data /var/lib/allowhelp/broker " in text


def test_agent_units_run_the_contract_commands() -> None:
    assert exec_paths((UNITS / "allowhelp-agent.service").read_text()) == {
        "/usr/bin/allowhelp-agent"
    }
    assert (
        "ExecStart=/usr/bin/allowhelp-agent run --system --idle doorbell\n"
        in (UNITS / "allowhelp-agent.service").read_text()
    )
    assert "ExecStart=/usr/bin/allowhelp-agent session\n" in (UNITS / USER_UNIT).read_text()


def test_autostart_entry() -> None:
    path = REPO / "packaging" / "xdg" / "allowhelp-agent-session.desktop"
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read_string(path.read_text())
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application"
    assert desktop["Exec"] == "/usr/bin/allowhelp-agent session"
    # systemd-managed sessions start the user unit instead: never both
    assert desktop["X-systemd-skip"] == "true"
    # freedesktop's validator (scripts/install test brings desktop-file-utils)
    done = subprocess.run(
        ["desktop-file-validate", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
