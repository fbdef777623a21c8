"""The demo keeps its ports across restarts, and what it prints runs as printed.

Real processes throughout: ``allowhelp-broker demo`` with its real agent, a
real connection left in TIME-WAIT on the port it listened on, and the printed
command lines run by a shell from the checkout, as a person would paste them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowhelp.broker.cli.demo_ports import choose, free_or_zero, is_free
from allowhelp.broker.listen import bind
from harness import wait_for

REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "allowhelp.broker.cli.main", "demo"]
TIME_WAIT = "06"  # the state column of /proc/net/tcp


def time_wait_on(port: int) -> bool:
    """Whether a connection from local ``port`` lingers in TIME-WAIT (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == TIME_WAIT:
            return True
    return False


def leave_time_wait() -> int:
    """Listen on a port, accept one connection, close it from the listening side
    first (so that side keeps TIME-WAIT), stop listening; return the port."""
    listener = bind("127.0.0.1", 0)
    port = int(listener.getsockname()[1])
    listener.setblocking(True)
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = listener.accept()
    accepted.close()
    client.recv(1)  # the server's FIN
    client.close()
    listener.close()
    wait_for(lambda: time_wait_on(port), 5, f"TIME-WAIT on port {port}")
    return port


def test_a_port_in_time_wait_is_free_for_the_demo_as_for_its_listener() -> None:
    port = leave_time_wait()
    plain = socket.socket()
    with pytest.raises(OSError):  # what the old probe saw: "taken", so it moved
        plain.bind(("127.0.0.1", port))
    plain.close()
    assert is_free(f"127.0.0.1:{port}")
    assert free_or_zero(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"
    bind("127.0.0.1", port).close()  # and the listener does take it


def test_a_port_another_program_listens_on_is_not_taken(tmp_path: Path) -> None:
    other = bind("127.0.0.1", 0)
    try:
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        assert not is_free(taken)
        assert free_or_zero(taken) == "127.0.0.1:0"
        (tmp_path / "ports.json").write_text(json.dumps({"https": taken}))
        with pytest.raises(ValueError, match="in use by another program"):
            choose(tmp_path, https=None, tunnel=None)
        assert choose(tmp_path, https="127.0.0.1:0", tunnel="127.0.0.1:0").https.endswith(":0")
    finally:
        other.close()


def test_a_damaged_ports_file_is_a_clear_error(tmp_path: Path) -> None:
    for text in ("{", "[1]", '{"https": "nowhere"}', '{"tunnel": "127.0.0.1:0"}'):
        (tmp_path / "ports.json").write_text(text)
        with pytest.raises(ValueError, match=r"ports\.json"):
            choose(tmp_path, https=None, tunnel=None)


class Demo:
    """``allowhelp-broker demo`` started from the checkout, as scripts/demo does."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.out = data.parent / f"demo-{time.monotonic_ns()}.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [*DEMO, "--data", str(data), *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def banner(self, timeout: float = 60) -> list[str]:
        """The lines it prints up to "press Ctrl-C"."""

        def printed() -> list[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited:\n{self.out.read_text()}")
            lines = self.out.read_text().splitlines()
            return lines if any("press Ctrl-C" in line for line in lines) else None

        found: list[str] = wait_for(printed, timeout, "the demo's banner")
        return found

    def runtime(self) -> dict[str, str]:
        info: dict[str, str] = json.loads((self.data / "broker" / "broker.json").read_text())
        return info

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.stop()


def as_printed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed line through a shell in the checkout, nothing of the venv on PATH."""
    return subprocess.run(
        command,
        shell=True,
        cwd=REPO,
        env={**os.environ, "PATH": "/usr/bin:/bin", "VIRTUAL_ENV": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def port_of(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def test_the_demo_restarts_on_its_ports_and_its_commands_run_as_printed(
    tmp_path: Path, demos: list[Demo]
) -> None:
    data = tmp_path / "demo"
    first = Demo(data, "--https", "127.0.0.1:0", "--tunnel", "127.0.0.1:0")
    demos.append(first)
    first.banner()
    before = first.runtime()
    assert json.loads((data / "ports.json").read_text()) == {
        "https": before["https"],
        "tunnel": before["tunnel"],
    }
    # A connection the broker closes first (bytes that are not TLS): its port
    # keeps that connection in TIME-WAIT after the stop.
    https_port = port_of(before["https"])
    with socket.create_connection(("127.0.0.1", https_port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert plain.recv(100) == b""
    first.stop()
    wait_for(lambda: time_wait_on(https_port), 10, "TIME-WAIT on the console's port")

    second = Demo(data)  # no address given: the remembered ones
    demos.append(second)
    banner = second.banner()
    after = second.runtime()
    assert (after["https"], after["tunnel"]) == (before["https"], before["tunnel"])
    assert after["public_url"] == before["public_url"]
    assert any(before["public_url"] in line for line in banner)

    commands = [line.strip() for line in banner if line.startswith("    ")]
    pending = next(c for c in commands if " pending " in c)
    token = next(c for c in commands if " token create " in c)
    assert pending.startswith(".venv/bin/allowhelp-agent "), pending
    done = as_printed(pending)
    assert done.returncode == 0, done.stderr
    assert "no help request is waiting" in done.stdout
    made = as_printed(token)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("ah1_"), made.stdout


def test_a_remembered_port_taken_meanwhile_is_a_one_line_error(tmp_path: Path) -> None:
    other = bind("127.0.0.1", 0)
    try:
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        data = tmp_path / "demo"
        data.mkdir()
        (data / "ports.json").write_text(json.dumps({"https": taken, "tunnel": taken}))
        done = subprocess.run(
            [*DEMO, "--data", str(data)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        other.close()
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "in use by another program" in done.stderr
    assert not (data / "broker").exists()  # nothing made before the refusal
