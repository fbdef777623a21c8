"""``allowhelp-agent enroll --token-file``: the token never on a command line.

Any local user reads every process's command line (``ps``, /proc/PID/cmdline), and
one token may enrol thousands of PCs for weeks. So the agent reads the token from
a file or standard input, and the package's ``enroll-from-token-file`` (postinst,
and every 30 s at boot until it works) hands it the file, not the token.
Real broker, real ``allowhelp-agent`` processes, the package's real script.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from allowhelp.agent.clienrol import MAX_TOKEN_FILE
from allowhelp.certs.token import EnrolmentToken
from harness import ADMIN, ADMIN_PW, PY, Broker, Fleet, agent_cli, wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "packaging/files/enroll-from-token-file"
SYSTEM_CONFIG = Path("/etc/allowhelp/agent")


@pytest.fixture
def broker(fleet: Fleet) -> Broker:
    broker = fleet.broker().start()
    broker.add_user(ADMIN, ADMIN_PW, role="admin")
    return broker


def token_file(folder: Path, text: str) -> Path:
    path = folder / "enroll-token"
    path.write_text(text)
    path.chmod(0o600)
    return path


def assert_enrolled(broker: Broker, config: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    agent_id = json.loads((config / "agent.json").read_text())["agent_id"]
    assert agent_id in done.stdout
    assert [a["id"] for a in broker.agents(ADMIN, ADMIN_PW)] == [agent_id]


def test_enrol_from_a_token_file(tmp_path: Path, broker: Broker) -> None:
    path = token_file(tmp_path, f"  \n{broker.token()}\r\n\t")  # as an editor leaves it
    config = tmp_path / "agent"
    done = agent_cli("enroll", "--token-file", str(path), "--config", str(config))
    assert_enrolled(broker, config, done)


def test_enrol_from_standard_input(tmp_path: Path, broker: Broker) -> None:
    config = tmp_path / "agent"
    done = agent_cli("enroll", "--token-file", "-", "--config", str(config), stdin=broker.token())
    assert_enrolled(broker, config, done)


def silent_server() -> socket.socket:
    """A 'broker' that takes the connection and never answers: enroll waits there."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    return server


def accepted(server: socket.socket, enroll: subprocess.Popen[bytes]) -> socket.socket | None:
    assert enroll.poll() is None, f"enroll ended ({enroll.returncode}) before it connected"
    try:
        return server.accept()[0]
    except TimeoutError:
        return None


def test_the_token_is_not_in_the_running_enrol_command_line(tmp_path: Path) -> None:
    with silent_server() as server:
        port = server.getsockname()[1]
        token = EnrolmentToken(
            url=f"https://127.0.0.1:{port}",
            secret=secrets.token_urlsafe(32),
            ca_fingerprint="ab" * 32,
        ).encode()
        path = token_file(tmp_path, token + "\n")
        argv = [PY, "-m", "allowhelp.agent.cli", "enroll", "--token-file", str(path)]
        enroll = subprocess.Popen(
            [*argv, "--config", str(tmp_path / "agent")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # once it connects, it has read and decoded the token: it is enrolling
            reached = wait_for(lambda: accepted(server, enroll), 30, "enroll to connect")
            cmdline = Path(f"/proc/{enroll.pid}/cmdline").read_bytes()
            reached.close()
        finally:
            enroll.kill()
            enroll.wait(10)
    assert b"enroll\0--token-file\0" in cmdline
    assert token.encode() not in cmdline
    assert token.encode()[4:40] not in cmdline


RECORDING_AGENT = """\
#!{python}
# stands for /usr/bin/allowhelp-agent: notes its arguments, then enrols for real,
# as a user into the test's folder instead of the machine's
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "a") as record:
    record.write(json.dumps(args) + "\\n")
    record.write(json.dumps(open("/proc/self/cmdline", "rb").read().decode()) + "\\n")
args = [a for a in args if a != "--system"]
args[args.index("--config") + 1] = {config!r}
os.execv({python!r}, [{python!r}, "-m", "allowhelp.agent.cli", *args])
"""


def test_the_package_script_hands_over_the_file_not_the_token(
    tmp_path: Path, broker: Broker
) -> None:
    if (SYSTEM_CONFIG / "agent.json").exists():
        pytest.skip(f"this PC is enrolled ({SYSTEM_CONFIG}): the script would not enrol")
    record, config = tmp_path / "argv.jsonl", tmp_path / "agent"
    program = tmp_path / "allowhelp-agent"
    program.write_text(
        RECORDING_AGENT.format(python=sys.executable, record=str(record), config=str(config))
    )
    program.chmod(0o755)
    token = broker.token()
    path = token_file(tmp_path, token + "\n")
    done = subprocess.run(
        ["sh", str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ALLOWHELP_AGENT_PROGRAM": str(program)},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enrolled; removed the token file" in done.stdout
    assert not path.exists()
    assert (config / "agent.json").is_file()
    argv, cmdline = (json.loads(line) for line in record.read_text().splitlines())
    assert argv[:4] == ["enroll", "--system", "--token-file", str(path)]
    assert token not in json.dumps(argv) and token not in cmdline


def test_the_script_enrols_through_its_token_file_option() -> None:
    """The installed script as well: the program it runs reads the file itself."""
    text = SCRIPT.read_text()
    assert 'enroll --system --token-file "$file"' in text
    assert "$token" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ah1_whatever", "--token-file", "-"], "give the token or --token-file FILE, not both"),
        ([], "give the token, or --token-file FILE to read it from a file"),
    ],
)
def test_the_token_or_a_token_file_exactly_one(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = agent_cli("enroll", *args, "--config", str(tmp_path / "agent"), stdin="")
    assert done.returncode == 2
    assert done.stderr == f"allowhelp-agent: error: {message}\n"
    assert not (tmp_path / "agent").exists()


def bad_files(folder: Path) -> list[tuple[str, str]]:
    big = token_file(folder, "ah1_" + "A" * MAX_TOKEN_FILE)
    empty = folder / "empty"
    empty.write_text(" \n")
    binary = folder / "binary"
    binary.write_bytes(b"\xff\xfe token")
    return [
        (str(big), f"{big} is larger than 8 KiB: it is not an enrolment token"),
        (str(empty), f"no enrolment token in {empty}"),
        (str(binary), f"{binary} is not text: it is not an enrolment token"),
        (str(folder / "missing"), f"cannot read the token file {folder / 'missing'}: No such"),
        (str(folder), f"cannot read the token file {folder}: Is a directory"),
    ]


def test_a_token_file_that_holds_no_token_is_one_clear_line(tmp_path: Path) -> None:
    for name, message in bad_files(tmp_path):
        done = agent_cli("enroll", "--token-file", name, "--config", str(tmp_path / "agent"))
        assert done.returncode == 2, name
        assert done.stderr.startswith(f"allowhelp-agent: error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    too_much = agent_cli("enroll", "--token-file", "-", stdin="x" * (MAX_TOKEN_FILE + 1))
    assert too_much.returncode == 2
    assert "standard input is larger than 8 KiB" in too_much.stderr
