"""The machine service against a stolen broker key, forged local peers and a fake socket.

The real broker is stopped after the enrolment; a rogue listener holding its
tunnel key takes its port. The machine service lets it in (the key is right)
and still opens nothing, the admin shell included, without the signed-in
user's click. Local users try to answer, report or serve in someone else's
place.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import asyncssh
import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine, stolen_machine
from roguekit import Sink, as_sink, ask, control, refused, stolen_key_connection

from allowhelp.agent.desktop import TEST_COMMAND_ENV
from allowhelp.protocol.control import SessionEnd, decode
from allowhelp.protocol.kinds import channel_subsystem
from harness import Broker, wait_for

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)

OWNER, OTHER = "ahtestc", "ahtestd"


@pytest.fixture(scope="module")
def stolen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with stolen_machine(tmp_path_factory.mktemp("machinegate"), OWNER, OTHER) as pair:
        yield pair


@pytest.fixture
async def rogue(stolen: tuple[Broker, Machine]) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Accept the machine service's next connection with the stolen key."""
    async with stolen_key_connection(stolen[0]) as conn:
        yield conn


def admin_shell(conn: asyncssh.SSHClientConnection, session_id: str) -> Awaitable[object]:
    return conn.create_session(
        Sink, term_type="xterm", subsystem=channel_subsystem("admin-shell", session_id)
    )


async def test_nobody_signed_in_is_answered_at_once(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    _, machine = stolen
    assert machine.helpers == {}
    chan, sink = await control(rogue)
    ask(chan, "NobodyHere0001", "admin-shell")
    await asyncio.to_thread(wait_for, lambda: b"session.end" in sink.data, 5, "the refusal")
    ended = [decode(line) for line in sink.data.splitlines() if b"session.end" in line]
    assert ended == [SessionEnd("NobodyHere0001", "nobody_signed_in")]
    hello = decode(sink.data.splitlines()[0])
    assert hello.type == "hello" and hello.system and hello.user == ""  # type: ignore[attr-defined]
    chan.close()


async def test_stolen_key_gets_no_admin_shell_without_the_users_click(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    _, machine = stolen
    await asyncio.to_thread(machine.start_helper, OWNER)
    chan, _sink = await control(rogue)
    assert await refused(admin_shell(rogue, "NeverAsked0001"))  # no request at all
    session_id = "AdminGate00001"
    ask(chan, session_id, "admin-shell")
    await asyncio.to_thread(
        wait_for, lambda: machine.pending(OWNER), 10, "the prompt for the signed-in user"
    )
    assert await refused(admin_shell(rogue, session_id))  # asked, not allowed
    other = await asyncio.to_thread(machine.cli, OTHER, "allow", session_id)
    assert other.returncode != 0 and "no request" in other.stderr
    assert await asyncio.to_thread(machine.pending, OTHER) == []
    assert await refused(admin_shell(rogue, session_id))  # still nothing
    allowed = await asyncio.to_thread(machine.cli, OWNER, "allow", session_id)
    assert allowed.returncode == 0, allowed.stderr
    # A grant for an admin shell opens no user shell, and the reverse.
    assert await refused(
        rogue.create_session(
            Sink, term_type="xterm", subsystem=channel_subsystem("shell", session_id)
        )
    )
    shell_chan, shell = as_sink(
        await rogue.create_session(
            Sink,
            term_type="xterm-$(touch /tmp/ahpwned)",  # no string of theirs reaches root's shell
            subsystem=channel_subsystem("admin-shell", session_id),
            encoding=None,
            env={"LD_PRELOAD": "/tmp/evil.so"},
        )
    )
    shell_chan.write(b"echo R$(id -u)R[${LD_PRELOAD}][${TERM}]\n")
    await asyncio.to_thread(wait_for, lambda: b"R0R[]" in shell.data, 15, "root's shell")
    assert b"R0R[][xterm-256color]" in shell.data
    assert not Path("/tmp/ahpwned").exists()
    assert await refused(admin_shell(rogue, session_id))  # one channel per grant
    ended = await asyncio.to_thread(machine.cli, OWNER, "end", session_id)
    assert ended.returncode == 0, ended.stderr
    await asyncio.wait_for(shell.closed.wait(), 5)
    chan.close()


_FORGER = """
import json, os, socket, sys
path, session_id = sys.argv[1], sys.argv[2]
for packet in (
    {"type": "opened", "session_id": session_id, "ok": True},
    {"type": "exited", "session_id": session_id, "status": 0},
    {"type": "helper", "uid": 0},
):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    fd = os.open("/dev/null", os.O_RDWR)
    socket.send_fds(s, [json.dumps(packet).encode()], [fd])
    if packet["type"] == "helper":
        print(s.recv(65536).decode())
    s.close()
"""


async def test_forged_peers_change_nothing(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    """Another user reports on the owner's shell, with a descriptor, and claims uid 0."""
    _, machine = stolen
    if OWNER not in machine.helpers:
        await asyncio.to_thread(machine.start_helper, OWNER)
    chan, _sink = await control(rogue)
    session_id = "ForgedPeer0001"
    ask(chan, session_id, "shell")
    await asyncio.to_thread(wait_for, lambda: machine.pending(OWNER), 10, "the prompt")
    assert (await asyncio.to_thread(machine.cli, OWNER, "allow", session_id)).returncode == 0
    shell_chan, shell = as_sink(
        await rogue.create_session(
            Sink,
            term_type="xterm",
            subsystem=channel_subsystem("shell", session_id),
            encoding=None,
        )
    )
    shell_chan.write(b"echo U$(id -un)U\n")
    await asyncio.to_thread(wait_for, lambda: f"U{OWNER}U".encode() in shell.data, 15, "shell")
    sock = str(machine.config / "run" / "agent.sock")
    forged = await asyncio.to_thread(
        subprocess.run,
        machine.as_user(OTHER, "-c", _FORGER, sock, session_id),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert forged.returncode == 0, forged.stderr
    assert '"helper": true' in forged.stdout and OTHER in forged.stdout  # known by its uid
    shell_chan.write(b"echo still-$((6*7))\n")
    await asyncio.to_thread(wait_for, lambda: b"still-42" in shell.data, 15, "the shell goes on")
    assert not shell.closed.is_set()
    assert "reported on a program that is not its own" in (machine.root / "service.log").read_text()
    # The forger's helper connection is gone; the owner is signed in again.
    await asyncio.to_thread(
        wait_for, lambda: machine.signed_in_here() == OWNER, 10, "the owner to be signed in"
    )
    shell_chan.close()
    chan.close()


async def test_the_screen_server_runs_as_the_user_after_their_click(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    """The helper starts the screen program (here a stand-in: the test knob) as its
    user and hands its socket over; the service only bridges it."""
    _, machine = stolen
    if OWNER in machine.helpers:
        await asyncio.to_thread(machine.stop_helper, OWNER)
    knob = f"{TEST_COMMAND_ENV}=/bin/sh -c 'echo screen-of-$(id -un); exec cat'"
    await asyncio.to_thread(machine.start_helper, OWNER, (knob,))
    chan, _sink = await control(rogue)
    session_id = "ScreenGate0001"
    ask(chan, session_id, "screen")
    await asyncio.to_thread(wait_for, lambda: machine.pending(OWNER), 10, "the prompt")
    screen = rogue.create_session(Sink, subsystem=channel_subsystem("screen", session_id))
    assert await refused(screen)
    # Under control: a view-only grant would have root's RFB filter refuse the
    # stand-in's plain text (test_screen_engines.py shows that filter).
    allowed = await asyncio.to_thread(machine.cli, OWNER, "allow", session_id)
    assert allowed.returncode == 0, allowed.stderr
    screen_chan, seen = as_sink(
        await rogue.create_session(
            Sink, subsystem=channel_subsystem("screen", session_id), encoding=None
        )
    )
    want = f"screen-of-{OWNER}".encode()
    await asyncio.to_thread(wait_for, lambda: want in seen.data, 15, "the user's screen program")
    screen_chan.write(b"echoed\n")
    await asyncio.to_thread(wait_for, lambda: b"echoed" in seen.data, 15, "both ways")
    ended = await asyncio.to_thread(machine.cli, OWNER, "end", session_id)
    assert ended.returncode == 0, ended.stderr
    await asyncio.wait_for(seen.closed.wait(), 5)
    chan.close()
    await asyncio.to_thread(machine.stop_helper, OWNER)


def test_the_helper_refuses_a_socket_that_is_not_roots(stolen: tuple[Broker, Machine]) -> None:
    _, machine = stolen
    fake = machine.root / "fake"
    (fake / "run").mkdir(parents=True)
    os.chmod(fake, 0o711)
    uid = int(
        subprocess.run(["id", "-u", OTHER], capture_output=True, text=True, check=True).stdout
    )
    os.chown(fake / "run", uid, uid)  # another user could put their own socket there
    done = subprocess.run(
        machine.as_user(
            OWNER, "-m", "allowhelp.agent.cli", "session", "--prompt", "none", "--config", str(fake)
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "not root's alone to write" in done.stderr
    assert "Traceback" not in done.stderr
    assert Path(fake / "run").exists()


def test_a_helper_started_before_the_service_waits_for_it(stolen: tuple[Broker, Machine]) -> None:
    """Autostart may run before the service is up: the helper waits, it does not die."""
    _, machine = stolen
    later = machine.root / "later"
    log = machine.root / "helper-early.log"
    argv = machine.as_user(
        OWNER, "-m", "allowhelp.agent.cli", "session", "--prompt", "none", "--config", str(later)
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for(lambda: "trying again" in log.read_text(), 15, "the helper to wait")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


async def test_root_drops_view_only_input_whatever_the_users_screen_server_takes(
    rogue: asyncssh.SSHClientConnection, stolen: tuple[Broker, Machine]
) -> None:
    """The user's screen program here takes every byte and writes it down (the test
    knob); under a view-only grant the machine service itself drops the viewer's
    input before it reaches the helper's socket, with no broker in between."""
    _, machine = stolen
    if OWNER in machine.helpers:
        await asyncio.to_thread(machine.stop_helper, OWNER)
    record = machine.root / "screen-received"
    record.touch()
    os.chown(record, *_ids(OWNER))
    recorder = f"/bin/sh -c 'echo RFB 003.008; exec cat >> {record}'"
    await asyncio.to_thread(machine.start_helper, OWNER, (f"{TEST_COMMAND_ENV}={recorder}",))
    chan, _sink = await control(rogue)
    session_id = "ScreenGate0002"
    ask(chan, session_id, "screen")
    await asyncio.to_thread(wait_for, lambda: machine.pending(OWNER), 10, "the prompt")
    allowed = await asyncio.to_thread(machine.cli, OWNER, "allow", session_id, "--view-only")
    assert allowed.returncode == 0, allowed.stderr
    screen_chan, seen = as_sink(
        await rogue.create_session(
            Sink, subsystem=channel_subsystem("screen", session_id), encoding=None
        )
    )
    await asyncio.to_thread(wait_for, lambda: b"RFB 003.008" in seen.data, 15, "the program")
    handshake = b"RFB 003.008\n\x01\x01"
    update = bytes([3, 0, 0, 0, 0, 0, 0, 10, 0, 10])
    key = bytes([4, 1, 0, 0, 0, 0, 0, 0x61])
    pointer = bytes([5, 1, 0, 5, 0, 5])
    screen_chan.write(handshake + key + pointer + update)
    want = handshake + update
    await asyncio.to_thread(wait_for, lambda: record.read_bytes() == want, 15, "the bytes")
    ended = await asyncio.to_thread(machine.cli, OWNER, "end", session_id)
    assert ended.returncode == 0, ended.stderr
    await asyncio.wait_for(seen.closed.wait(), 5)
    assert record.read_bytes() == want, "view-only input reached the user's screen program"
    chan.close()
    await asyncio.to_thread(machine.stop_helper, OWNER)


def _ids(user: str) -> tuple[int, int]:
    account = pwd.getpwnam(user)
    return account.pw_uid, account.pw_gid
