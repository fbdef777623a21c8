"""The packaged machine service's command, run as its unit says (no systemd here).

``packaging/systemd/allowhelp-agent.service``'s ``ExecStart`` is read from the unit
file and run as is: ``/usr/bin/allowhelp-agent`` is the installed entry point,
the configuration folder is the one ``ConfigurationDirectory=`` makes (systemd
names it in ``$CONFIGURATION_DIRECTORY``; here under a scratch /etc), the umask is
the unit's ``UMask=``, the environment as bare as systemd's. Against a real broker
it idles on the doorbell (no asyncssh, no cryptography in the process; RSS under
issue #19's 25 MB, from /proc), a technician's request wakes it and the prompt
reaches the signed-in user's session, and SIGTERM ends it, full agent included,
within ``TimeoutStopSec=``.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from machinekit import (
    CAN_RUN,
    REPO,
    WHY_NOT,
    Machine,
    enroll_system,
    local_users,
    passable_folder,
    rss_kib,
)

from allowhelp.agent.cliargs import SYSTEMD_CONFIG_ENV, system_config_dir
from harness import (
    TECH,
    TECH_PW,
    Broker,
    Desk,
    log_mark,
    log_since,
    online,
    staffed_broker,
    wait_for,
)

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)
UNIT = REPO / "packaging" / "systemd" / "allowhelp-agent.service"
USER = "ahdoorpk"
RSS_GOAL_KIB = 25 * 1000  # issue #19: the idle agent at most 25 MB
# Loaded by the tunnel (asyncssh needs cryptography's native module): never in the doorbell.
HEAVY = re.compile(r"cryptography/hazmat/bindings|/asyncssh/")


def service_settings(text: str) -> dict[str, str]:
    """The unit's ``[Service]`` settings (one value each: ours set none twice)."""
    settings: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def seconds_of(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*s?", value)
    assert match, f"TimeoutStopSec={value} is not in seconds"
    return float(match[1])


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def woken_pid(text: str) -> int:
    found = re.findall(r"starting the full agent \(.*?\): pid (\d+)", text)
    assert found, text
    return int(found[-1])


def test_the_unit_s_command_idles_on_the_doorbell_wakes_and_stops(tmp_path: Path) -> None:
    settings = service_settings(UNIT.read_text())
    argv = shlex.split(settings["ExecStart"])
    assert argv[0] == "/usr/bin/allowhelp-agent"
    argv[0] = str(Path(sys.executable).parent / "allowhelp-agent")  # the installed entry point
    umask = int(settings["UMask"], 8)
    stop_within = seconds_of(settings["TimeoutStopSec"])
    with (
        staffed_broker(tmp_path) as fleet,
        local_users(USER),
        passable_folder() as root,
    ):
        broker: Broker = fleet.brokers[0]
        config = root / "etc" / settings["ConfigurationDirectory"]
        config.parent.mkdir(parents=True, mode=0o755)
        enroll_system(broker, config)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "CONFIGURATION_DIRECTORY": str(config),
        }
        log = root / "service.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, env=env, umask=umask, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        machine = Machine(root, config, service=proc)
        helper: subprocess.Popen[bytes] | None = None
        try:
            # first start: the full agent fetches the doorbell's key, idles --linger (60 s)
            wait_for(lambda: "is idle and ended" in log.read_text(), 100, "the first full agent")
            wait_for(lambda: "doorbell connected" in log.read_text(), 30, "the doorbell")
            wait_for(lambda: online(broker, machine.agent_id), 10, "online by the doorbell")
            assert (config / "doorbell.json").stat().st_mode & 0o777 == 0o600
            # what waits is the doorbell: no tunnel code, small
            assert not HEAVY.search(mapped(proc.pid))
            rss = rss_kib(proc.pid)
            print(f"the packaged unit idles on its doorbell at VmRSS {rss} KiB")
            assert rss < RSS_GOAL_KIB, f"the idle doorbell uses {rss} KiB"
            # the user signs in: the console sees them at once, nothing is woken
            mark = log_mark(log)
            helper_argv = machine.as_user(
                USER, "-m", "allowhelp.agent.cli", "session", "--prompt", "none",
                "--config", str(config),
            )  # fmt: skip
            with (root / "helper.log").open("ab") as out:
                helper = subprocess.Popen(
                    helper_argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
            wait_for(
                lambda: machine.agent_row(broker)["signed_in"] == USER, 15, "the user signed in"
            )
            assert "starting the full agent" not in log_since(log, mark)
            # a technician asks: the broker rings, the full agent starts, the user is asked
            desk = Desk.login(broker, TECH, TECH_PW)
            try:
                asked = desk.request(machine.agent_id, kind="shell", reason="packaged unit")
                assert asked.status_code == 201, asked.text
                session_id = asked.json()["id"]
                wait_for(
                    lambda: any(p["session_id"] == session_id for p in machine.pending(USER)),
                    20,
                    "the prompt in the user's session",
                )
            finally:
                desk.close()
            woken = woken_pid(log_since(log, mark))
            assert HEAVY.search(mapped(woken))  # the check above can fail: the tunnel's has it
            # systemd's stop: SIGTERM, at most TimeoutStopSec before its SIGKILL
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(stop_within) == 0
            assert time.monotonic() - stopping < stop_within
            assert not Path(f"/proc/{woken}").exists()  # the full agent ended with it
        finally:
            if helper is not None and helper.poll() is None:
                helper.terminate()
                helper.wait(15)
            machine.stop()
        said = log.read_text()
        assert "Traceback" not in said
        assert "doorbell stopped" in said


@pytest.mark.parametrize(
    ("given", "folder"),
    [
        (None, "/etc/allowhelp/agent"),
        ("/etc/allowhelp/agent", "/etc/allowhelp/agent"),
        ("/srv/agent:/srv/other", "/srv/agent"),  # systemd joins several with ':'
        ("relative/agent", "/etc/allowhelp/agent"),  # not systemd's: ignored
        ("", "/etc/allowhelp/agent"),
    ],
)
def test_the_machine_service_s_folder_is_systemd_s(
    monkeypatch: pytest.MonkeyPatch, given: str | None, folder: str
) -> None:
    if given is None:
        monkeypatch.delenv(SYSTEMD_CONFIG_ENV, raising=False)
    else:
        monkeypatch.setenv(SYSTEMD_CONFIG_ENV, given)
    assert system_config_dir() == Path(folder)
