"""Issue #12 against a real agent: hostile JSON, a squatted socket folder, a stubborn shell.

A. A deeply nested or garbage request on the agent's local socket gets a clear
   answer and the socket keeps serving; the same on the control channel from a
   (stolen-key) broker is a logged protocol error that closes that one tunnel,
   and the agent dials again and works.
B. With XDG_RUNTIME_DIR unset the socket folder is in the user's own home:
   another local user creating ``/tmp/allowhelp-<uid>`` first locks no one out,
   and a folder at the new place that is not the user's is refused, plainly.
   Run with real local users (useradd, runuser), so we must be root.
C. Ending a shell that ignores SIGHUP and SIGTERM never blocks the agent's
   event loop, and no process of its group is left afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest

import allowhelp
from allowhelp.agent.config import HOST_KEY_FILE, AgentConfig, prepare_folder
from allowhelp.agent.localpath import socket_path
from allowhelp.agent.localsocket import MAX_REQUEST
from allowhelp.agent.pty import PtyShell
from allowhelp.agent.screen import ScreenProcess
from allowhelp.agent.screenlaunch import PairLaunch
from allowhelp.certs import ssh_options
from allowhelp.certs.sshkeys import generate_host_key, public_key_line
from allowhelp.protocol.control import ConsentDecision, ConsentRequest, Hello, decode
from allowhelp.protocol.kinds import CONTROL_SUBSYSTEM
from harness import Agent, Fleet, agent_call, wait_for, wait_pending

# ---------------------------------------------------------------- A: hostile JSON


@dataclass
class Pinned:
    """A real agent process pinned to a broker key this test holds."""

    agent: Agent
    broker_key: asyncssh.SSHKey
    port: int

    def new_log(self) -> Callable[[], str]:
        """What the agent logs from now on."""
        start = self.agent.log.stat().st_size
        return lambda: self.agent.log.read_bytes()[start:].decode(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pinned]:
    """Enrolled by hand (no broker needed): the config a broker would have given."""
    root = tmp_path_factory.mktemp("hardening")
    fleet = Fleet(root)
    try:
        agent = fleet.agent()
        broker_key = asyncssh.generate_private_key("ssh-ed25519")
        port = free_port()
        prepare_folder(agent.config)
        generate_host_key(agent.config / HOST_KEY_FILE)
        AgentConfig(
            broker_url="https://127.0.0.1:9",
            ca_pem="",
            ca_fingerprint="",
            tunnel_host="127.0.0.1",
            tunnel_port=port,
            broker_tunnel_key=public_key_line(broker_key),
            agent_id="a-hardeningtest00001",
            organisation="Hardening",
        ).save(agent.config)
        agent.start("--reconnect-cap", "1", "--prompt", "none")
        path = socket_path(agent.config)
        wait_for(path.exists, 20, "the agent's control socket")
        yield Pinned(agent, broker_key, port)
    finally:
        fleet.close()


def ask_raw(path: Path, payload: bytes) -> tuple[dict[str, Any], bool]:
    """Send bytes as a CLI would; the answer, and whether the agent then hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(payload)
        with contextlib.suppress(OSError):  # the agent may have answered and gone already
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            hung_up = sock.recv(1) == b""
        except ConnectionResetError:  # it closed with our excess bytes unread
            hung_up = True
    answer: dict[str, Any] = json.loads(data)
    return answer, hung_up


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (b"[" * 60000 + b"\n", f"longer than {MAX_REQUEST} bytes"),  # the body
        (b"[" * 60000, f"longer than {MAX_REQUEST} bytes"),  # and without its newline
        (b"[" * 4000 + b"\n", "nested too deeply"),
        (b'{"op": "status", "x": ' + b"{" * 2000 + b"\n", "nested too deeply"),
        (b'{"op": "status", "x": [[[[[[1]]]]]]}\n', "nested too deeply"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"garbage\n", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "allow"}\n', "unknown op"),
        (b'{"op": {"op": "status"}}\n', "unknown op"),
        (b'{"op": "end", "session_id": 12}\n', "unknown op"),
    ],
    ids=lambda v: v[:20] if isinstance(v, bytes) else None,
)
def test_hostile_requests_get_a_clear_answer_and_the_socket_keeps_serving(
    pinned: Pinned, payload: bytes, said: str
) -> None:
    logged = pinned.new_log()
    path = socket_path(pinned.agent.config)
    answer, hung_up = ask_raw(path, payload)
    assert answer["ok"] is False
    assert said in answer["error"], answer
    assert hung_up
    status, _ = ask_raw(path, b'{"op": "status"}\n')
    assert status["ok"] is True and status["agent_id"] == "a-hardeningtest00001"
    listed = agent_call(pinned.agent, "pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert pinned.agent.proc is not None and pinned.agent.proc.poll() is None
    assert "Traceback" not in logged()


class Sink(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.data = b""
        self.changed = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.data += data
        self.changed.set()

    async def line(self) -> bytes:
        while b"\n" not in self.data:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 15)
        line, _, self.data = self.data.partition(b"\n")
        return line


class BrokerSide:
    """The broker's end of the tunnel with the pinned key: takes the agent's calls."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()

    async def next(self) -> asyncssh.SSHClientConnection:
        return await asyncio.wait_for(self.arrived.get(), 30)


@pytest.fixture
async def broker_side(pinned: Pinned) -> AsyncIterator[BrokerSide]:
    side = BrokerSide()
    options = asyncssh.SSHClientConnectionOptions(
        username=ssh_options.BROKER_USERNAME,
        client_keys=[pinned.broker_key],
        known_hosts=None,
        agent_path=None,
    )
    server = await asyncssh.listen_reverse(
        "127.0.0.1",
        pinned.port,
        options=options,
        config=None,
        acceptor=side.arrived.put_nowait,
    )
    try:
        yield side
    finally:
        server.close()
        await server.wait_closed()
        while not side.arrived.empty():
            side.arrived.get_nowait().close()


async def control(
    conn: asyncssh.SSHClientConnection,
) -> tuple[asyncssh.SSHClientChannel[bytes], Sink]:
    chan, session = await conn.create_session(Sink, subsystem=CONTROL_SUBSYSTEM, encoding=None)
    sink = cast(Sink, session)  # asyncssh types it as the base class, whatever Sink made
    assert isinstance(decode(await sink.line()), Hello)
    return chan, sink


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"[" * 15000, "nested too deeply"),  # within MAX_LINE: reaches the JSON decoder
        (b"[" * 60000, "control line too long"),
        (b'{"type": "session.end", "x": ' + b"{" * 9000, "nested too deeply"),
    ],
    ids=["nested", "long", "nested-field"],
)
async def test_a_nested_control_line_is_a_protocol_error_and_the_agent_carries_on(
    pinned: Pinned, broker_side: BrokerSide, line: bytes, said: str
) -> None:
    logged = pinned.new_log()
    conn = await broker_side.next()
    chan, _ = await control(conn)
    chan.write(line + b"\n")
    await asyncio.wait_for(conn.wait_closed(), 15)  # that tunnel, and only it, is dropped
    assert pinned.agent.proc is not None and pinned.agent.proc.poll() is None
    said_by_agent = logged()
    assert "bad control channel (protocol error)" in said_by_agent
    assert said in said_by_agent and "Traceback" not in said_by_agent

    again = await broker_side.next()  # it dials again, and the protocol works
    try:
        chan, sink = await control(again)
        request = ConsentRequest(
            session_id="NestedAfter01",
            organisation="Org",
            technician="Ann",
            kind="shell",
            reason="after the hostile line",
            phrase="a b c",
            timeout=30.0,
        )
        chan.write(request.encode())
        await asyncio.to_thread(wait_pending, pinned.agent, request.session_id)
        denied = await asyncio.to_thread(agent_call, pinned.agent, "deny", request.session_id)
        assert denied.returncode == 0, denied.stderr
        decision = decode(await sink.line())
        assert isinstance(decision, ConsentDecision) and decision.granted is False
    finally:
        again.close()


# ------------------------------------------------- B: the socket folder, as real users

PYTHON = "/usr/bin/python3"  # the virtual environment's may sit where a test user cannot read
SERVE = """
import asyncio, sys
from pathlib import Path
from allowhelp.agent.config import AgentConfig
from allowhelp.agent.localpath import socket_path
from allowhelp.agent.localsocket import LocalControlServer
from allowhelp.agent.service import AgentService

async def main() -> None:
    config = AgentConfig("https://b.invalid", "", "", "127.0.0.1", 9, "", "a-squatvictim", "Org")
    server = LocalControlServer(AgentService(config), socket_path(Path(sys.argv[1])))
    await server.start()
    print(server.path, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def code() -> Iterator[Path]:
    """The agent's code where any local user can read it (the checkout may not be)."""
    if os.geteuid() != 0:
        pytest.fail("these tests create local users (useradd): run them as root")
    for tool in ("useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required for this test")
    assert Path(PYTHON).exists(), "Debian's python3 is needed to run code as a test user"
    folder = Path(tempfile.mkdtemp(prefix="allowhelp-code-"))
    try:
        source = Path(allowhelp.__file__).parent
        skip = shutil.ignore_patterns("__pycache__")
        (folder / "allowhelp").mkdir()
        for module in ("__init__.py", "runtime.py"):
            shutil.copy(source / module, folder / "allowhelp")
        for package in ("agent", "protocol"):
            shutil.copytree(source / package, folder / "allowhelp" / package, ignore=skip)
        subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True, timeout=10)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_user() -> Iterator[Callable[[], pwd.struct_passwd]]:
    """Real local users, each removed again (home included) whatever the outcome."""
    made: list[str] = []

    def make() -> pwd.struct_passwd:
        name = f"ahsquat{secrets.token_hex(4)}"
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        made.append(name)
        return pwd.getpwnam(name)

    yield make
    for name in made:
        subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30, check=False)


def runuser(user: pwd.struct_passwd, *argv: str) -> list[str]:
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user.pw_name, "--", *argv]


def as_user(user: pwd.struct_passwd, *args: str) -> list[str]:
    return runuser(user, PYTHON, *args)


def user_env(code: Path, **extra: str) -> dict[str, str]:
    """Only what is said here: no XDG_RUNTIME_DIR unless a test gives one."""
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(code),
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


def agent_cli_as(
    user: pwd.struct_passwd, code: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user(user, "-m", "allowhelp.agent.cli", *args),
        env=user_env(code, **env),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_folder_squatted_in_tmp_no_longer_locks_the_user_out(
    code: Path, make_user: Callable[[], pwd.struct_passwd]
) -> None:
    victim, squatter = make_user(), make_user()
    squat = Path(f"/tmp/allowhelp-{victim.pw_uid}")  # the old, guessable name
    shutil.rmtree(squat, ignore_errors=True)
    try:
        subprocess.run(
            runuser(squatter, "mkdir", "-m", "777", str(squat)),
            check=True,
            timeout=30,
        )
        assert squat.stat().st_uid == squatter.pw_uid
        config = f"{victim.pw_dir}/agent-config"
        with subprocess.Popen(
            as_user(victim, "-c", SERVE, config),
            env=user_env(code),
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as agent:
            assert agent.stdout is not None and agent.stdin is not None
            line = agent.stdout.readline().strip()  # the socket is listening once it is said
            try:
                assert line, agent.communicate(timeout=10)[1]
                path = Path(line)
                assert path.parent == Path(victim.pw_dir, ".cache", "allowhelp", "run")
                folder = path.parent.lstat()
                assert stat.S_ISDIR(folder.st_mode) and folder.st_uid == victim.pw_uid
                assert stat.S_IMODE(folder.st_mode) == 0o700
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                listed = agent_cli_as(victim, code, "pending", "--json", "--config", config)
                assert listed.returncode == 0, listed.stderr
                assert json.loads(listed.stdout) == []
                assert not any(squat.iterdir())  # nothing of the victim's went there
            finally:
                agent.stdin.close()
                agent.wait(15)
            assert agent.returncode == 0
    finally:
        shutil.rmtree(squat, ignore_errors=True)


def squat_owner(run: Path, squatter: pwd.struct_passwd) -> None:
    run.mkdir(mode=0o700)
    os.chown(run, squatter.pw_uid, squatter.pw_gid)


def squat_symlink(run: Path, squatter: pwd.struct_passwd) -> None:
    target = Path(tempfile.mkdtemp(prefix="ahsquat-target-"))
    os.chown(target, squatter.pw_uid, squatter.pw_gid)
    target.chmod(0o777)
    run.symlink_to(target)


def squat_writable(run: Path, squatter: pwd.struct_passwd) -> None:
    run.mkdir()
    run.chmod(0o777)
    os.chown(run, run.parent.stat().st_uid, run.parent.stat().st_gid)


def squat_file(run: Path, squatter: pwd.struct_passwd) -> None:
    run.write_text("")
    os.chown(run, squatter.pw_uid, squatter.pw_gid)


@pytest.mark.parametrize(
    ("squat", "said"),
    [
        (squat_owner, "not to you: refusing to use it"),
        (squat_symlink, "is a symlink: refusing to use it"),
        (squat_writable, "is writable by other users"),
        (squat_file, "is not a directory: refusing to use it"),
    ],
    ids=["other-owner", "symlink", "world-writable", "a-file"],
)
@pytest.mark.parametrize("xdg", [False, True], ids=["home", "xdg-runtime-dir"])
def test_a_folder_at_the_new_place_that_is_not_the_user_s_is_refused(
    code: Path,
    make_user: Callable[[], pwd.struct_passwd],
    squat: Callable[[Path, pwd.struct_passwd], None],
    said: str,
    xdg: bool,
) -> None:
    victim, squatter = make_user(), make_user()
    base = Path(victim.pw_dir, "xdg-runtime") if xdg else Path(victim.pw_dir, ".cache")
    run = base / "allowhelp" if xdg else base / "allowhelp" / "run"
    for folder in [base] if xdg else [base, base / "allowhelp"]:  # the user's own, as usual
        folder.mkdir(mode=0o700)
        os.chown(folder, victim.pw_uid, victim.pw_gid)
    squat(run, squatter)
    before = run.lstat()
    target_mode = run.stat().st_mode if run.exists() else None
    env = {"XDG_RUNTIME_DIR": str(base)} if xdg else {}
    try:
        refused = agent_cli_as(victim, code, "pending", "--config", f"{victim.pw_dir}/c", **env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith("allowhelp-agent: error: "), refused.stderr
        assert str(run) in refused.stderr and said in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        after = run.lstat()  # refused means untouched: not chmodded, not followed
        assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
        if target_mode is not None:
            assert run.stat().st_mode == target_mode
    finally:
        if run.is_symlink():
            shutil.rmtree(run.resolve(), ignore_errors=True)


# ----------------------------------------------------- C: teardown off the event loop


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    async def expect(self, needle: bytes) -> None:
        while needle not in self.data:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 15)


def group_members(pgid: int) -> list[int]:
    """The live processes of a group (a zombie is dead: here PID 1 may never reap it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone while we looked
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


async def group_gone(pgid: int) -> list[int]:
    """Await the SIGKILLed rest of the group dying (the kernel does it, not at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (left := group_members(pgid)) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return left


async def loop_lag() -> float:
    """How long a callback scheduled now waits for the loop to run it."""
    loop = asyncio.get_running_loop()
    ran: asyncio.Future[float] = loop.create_future()
    asked = loop.time()
    loop.call_soon(lambda: ran.set_result(loop.time()))
    return await asyncio.wait_for(ran, 10) - asked


async def test_a_stubborn_shell_is_ended_without_blocking_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="allowhelp.agent.reaper")
    out = Collect()
    exits: list[int] = []
    shell = PtyShell(out, term="xterm-256color", cols=80, rows=24, on_exit=exits.append)
    pid = shell.pid
    try:
        # No job control, so the background sleep stays in the shell's group; both
        # ignore SIGHUP and SIGTERM (an ignored signal stays ignored across fork and exec).
        shell.write(b"set +m; trap '' HUP TERM; sleep 1000 & echo stub''born; exec sleep 1000\n")
        await out.expect(b"stubborn")
        assert len(group_members(pid)) >= 2
        loop = asyncio.get_running_loop()
        lag = asyncio.ensure_future(loop_lag())  # asked before the teardown starts
        started = loop.time()
        assert shell.close() == -1  # not known yet: the group is still being ended
        assert loop.time() - started < 0.5
        assert await lag < 0.5
        assert len(group_members(pid)) >= 2  # it ignored SIGHUP, and the loop answered anyway
        assert await loop_lag() < 0.5
        ended = shell.ended
        assert ended is not None
        assert await asyncio.wait_for(ended, 20) == -signal.SIGKILL
        assert await group_gone(pid) == []
        said = caplog.text
        assert said.index("ignored SIGHUP") < said.index("ignored SIGTERM")
        assert not exits  # closed by us: no exit report
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def test_the_rest_of_the_group_gets_its_grace_to_clean_up(tmp_path: Path) -> None:
    """A child that tidies up on SIGHUP (pyenv's rehash removing its lock file, say)
    is not SIGKILLed the moment the shell itself has gone."""
    out = Collect()
    shell = PtyShell(out, term="xterm-256color", cols=80, rows=24, on_exit=lambda s: None)
    pid = shell.pid
    tidy = tmp_path / "tidied"
    try:
        shell.write(
            b"set +m; (trap 'sleep 0.3; echo done > " + str(tidy).encode() + b"; exit' HUP;"
            b" echo hel''per; while :; do sleep 0.05; done) &\n"  # said once its trap is set
        )
        await out.expect(b"helper")
        shell.close()
        ended = shell.ended
        assert ended is not None
        assert await asyncio.wait_for(ended, 20) == -signal.SIGHUP  # the shell went at once
        assert await group_gone(pid) == []
        assert tidy.read_text() == "done\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def test_a_shell_that_exits_reports_its_own_status() -> None:
    out = Collect()
    exits: asyncio.Queue[int] = asyncio.Queue()
    shell = PtyShell(out, term="xterm-256color", cols=80, rows=24, on_exit=exits.put_nowait)
    shell.write(b"exit 3\n")
    assert await asyncio.wait_for(exits.get(), 20) == 3
    assert await group_gone(shell.pid) == []


async def test_the_screen_is_ended_by_the_same_reaper_off_the_loop() -> None:
    stubborn = ["sh", "-c", "trap '' TERM; sleep 1000 & echo up; exec sleep 1000"]
    out = Collect()
    exits: list[int] = []
    launch = PairLaunch(stubborn, {"PATH": "/usr/bin:/bin"})
    screen = ScreenProcess(out, launch, lambda s, e: exits.append(s))
    pid = screen.pid
    try:
        await out.expect(b"up")  # on the socketpair: the background sleep is running
        assert len(group_members(pid)) >= 2
        loop = asyncio.get_running_loop()
        started = loop.time()
        screen.close()
        assert loop.time() - started < 0.5
        assert await loop_lag() < 0.5
        assert len(group_members(pid)) >= 2  # it ignored SIGTERM, and the loop answered anyway
        ended = screen.ended
        assert ended is not None
        assert await asyncio.wait_for(ended, 20) == -signal.SIGKILL
        assert await group_gone(pid) == []
        assert not exits  # closed by us: no exit report
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
