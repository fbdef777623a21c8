"""An idle agent has not imported what only sessions, enrolment or the other command need.

An idle agent's memory is mostly the code it imported (docs/benchmarks.md, "Agent
RSS"): the modules of a screen, a shell, a files session, a fleet job, the tunnel
on the HTTPS port and enrolment load when first used (``agent/runner.py``). Here a
real agent (``run``, and ``run --system`` as root) is started by a real broker's
side, left idle once online, and asked for its ``sys.modules``: a module-level
import that brings one of them back at start fails this test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from harness import (
    PY,
    TECH,
    TECH_PW,
    Agent,
    Broker,
    Desk,
    agent_call,
    agent_cli,
    online,
    pending,
    staffed_broker,
    wait_for,
)
from screenkit import screen_socket

# The agent's own CLI, plus: SIGUSR1 writes sys.modules (as JSON) to argv[1].
PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys
    out = sys.argv[1]
    def dump(*_):
        with open(out + ".part", "w") as fh:
            json.dump(sorted(sys.modules), fh)
        os.replace(out + ".part", out)
    signal.signal(signal.SIGUSR1, dump)
    from allowhelp.agent.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)

# The agent's own CLI on a PC where the screen's module cannot be loaded, as when an
# upgrade replaced the files under a running agent and one no longer imports.
NO_SCREEN_MODULE = textwrap.dedent(
    """
    import runpy, sys
    sys.modules["allowhelp.agent.screen"] = None  # `import allowhelp.agent.screen` fails
    runpy.run_module("allowhelp.agent.cli", run_name="__main__")
    """
)

# A screen module of another version, loaded after an upgrade: it imports, but its
# ``screen_factory`` does not take what the running agent gives it.
MISFIT_SCREEN_MODULE = textwrap.dedent(
    """
    import runpy, sys, types
    misfit = types.ModuleType("allowhelp.agent.screen")
    def screen_factory():  # one argument fewer than the running agent passes
        raise AssertionError("never called with the wrong arguments")
    misfit.screen_factory = screen_factory
    sys.modules["allowhelp.agent.screen"] = misfit
    runpy.run_module("allowhelp.agent.cli", run_name="__main__")
    """
)

# Loaded by a session, a job, the HTTPS route, enrolment or kdialog: never at start.
SESSION_ONLY = {
    "allowhelp.agent.screen",  # and the engines it picks
    "allowhelp.agent.screenlaunch",
    "allowhelp.agent.x11vnc",
    "allowhelp.agent.wayvnc",
    "allowhelp.agent.portalvnc",
    "allowhelp.agent.rfbinput",
    "allowhelp.agent.files",
    "allowhelp.agent.pty",
    "allowhelp.agent.remote",
    "allowhelp.agent.jobrun",
    "allowhelp.agent.fleetpolicy",
    "allowhelp.certs.jobsign",
    "allowhelp.agent.wstunnel",
    "websockets",  # and importlib.metadata, zipfile, csv that it brings
    "allowhelp.agent.enrol",
    "allowhelp.certs.pki",
    "allowhelp.certs.hostnames",
    "allowhelp.certs.pemfiles",
    "allowhelp.certs.token",
    "http.client",  # and email.parser, urllib.request: enrolment, a proxy in the environment
    "urllib.request",
    "html",  # kdialog's text alone (2,000 entities)
}
# What the other command runs.
MACHINE_ONLY = {
    "allowhelp.agent.machine",
    "allowhelp.agent.sessionhelpers",
    "allowhelp.agent.machinerequests",
    "allowhelp.agent.jobs",
    "allowhelp.agent.inventory",
    "allowhelp.agent.history",
    "allowhelp.agent.signedin",
}
PER_USER_ONLY = {"allowhelp.agent.frontends", "allowhelp.agent.localsocket"}
# Never in the doorbell (``run --idle doorbell``, agent/doorbell.py): the idle agent's
# memory is a small Python holding one TLS stream (issue #19).
NOT_IN_THE_DOORBELL = {
    "asyncio",
    "asyncssh",
    "cryptography",
    "allowhelp.agent.tunnel",
    "allowhelp.agent.service",
    "allowhelp.protocol.control",
    "ctypes",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with staffed_broker(tmp_path_factory.mktemp("idle")) as fleet:
        yield fleet.brokers[0]


def idle_modules(broker: Broker, root: Path, *, system: bool) -> set[str]:
    """The modules of a real agent, online and idle (its hello answered)."""
    out = root / "modules.json"
    agent = Agent(root / "agent", program=[PY, "-c", PROGRAM, str(out)])
    enrol = ["enroll", *(["--system"] if system else []), broker.token()]
    enrolled = agent_cli(*enrol, "--config", str(agent.config))
    assert enrolled.returncode == 0, enrolled.stderr
    run = ["--system"] if system else ["--prompt", "none"]
    agent.start(*run, "--reconnect-cap", "2")
    try:
        wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGUSR1)
        wait_for(out.exists, 10, "the agent's list of modules")
        return set(json.loads(out.read_text()))
    finally:
        agent.stop()


def test_the_idle_per_user_agent_has_not_loaded_session_modules(
    broker: Broker, tmp_path: Path
) -> None:
    modules = idle_modules(broker, tmp_path, system=False)
    # the list is the running agent's: its tunnel is up, its gate and prompts ready
    assert {"asyncssh", "allowhelp.agent.tunnel", "allowhelp.agent.frontends"} <= modules
    assert modules & (SESSION_ONLY | MACHINE_ONLY) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="run --system runs as root")
def test_the_idle_machine_service_has_not_loaded_session_modules(
    broker: Broker, tmp_path: Path
) -> None:
    modules = idle_modules(broker, tmp_path, system=True)
    assert {"asyncssh", "allowhelp.agent.tunnel", "allowhelp.agent.machine"} <= modules
    assert modules & (SESSION_ONLY | PER_USER_ONLY) == set()


def test_the_idle_doorbell_imports_no_asyncio_asyncssh_or_cryptography(
    broker: Broker, tmp_path: Path
) -> None:
    out = tmp_path / "modules.json"
    agent = Agent(tmp_path / "agent", program=[PY, "-c", PROGRAM, str(out)])
    assert agent.enroll(broker.token()).returncode == 0
    agent.start("--prompt", "none", "--idle", "doorbell", "--linger", "1")
    try:
        # its full agent started (no key yet) and ended: the doorbell alone is left
        wait_for(lambda: "is idle and ended" in agent.log.read_text(), 30, "the full agent's end")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGUSR1)
        wait_for(out.exists, 10, "the doorbell's list of modules")
        modules = set(json.loads(out.read_text()))
    finally:
        agent.stop()
    assert {"allowhelp.agent.doorbell", "ssl"} <= modules
    assert {m.split(".")[0] for m in modules} & {"asyncio", "asyncssh", "cryptography"} == set()
    assert modules & (NOT_IN_THE_DOORBELL | SESSION_ONLY | MACHINE_ONLY | PER_USER_ONLY) == set()


@pytest.mark.parametrize(
    ("program", "said"),
    [
        (NO_SCREEN_MODULE, "allowhelp.agent.screen"),  # what failed to load, said
        (MISFIT_SCREEN_MODULE, "TypeError"),  # loaded, but of another version
    ],
    ids=["cannot-load", "misfit"],
)
def test_a_session_module_that_cannot_load_fails_its_session_not_the_tunnel(
    broker: Broker, tmp_path: Path, program: str, said: str
) -> None:
    agent = Agent(tmp_path / "agent", program=[PY, "-c", program])
    assert agent.enroll(broker.token()).returncode == 0
    # a screen on offer (the tests' knob; never run: the module that would run it fails)
    env = {**os.environ, "ALLOWHELP_TEST_SCREEN_COMMAND": "cat"}
    agent.start("--prompt", "none", "--reconnect-cap", "2", env=env)
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        wait_for(lambda: online(broker, agent.agent_id), 20, "the agent to come online")
        session_id = desk.request(agent.agent_id, "screen").json()["id"]
        wait_for(lambda: pending(agent), 15, "the consent prompt")
        assert agent_call(agent, "allow", session_id).returncode == 0

        async def closed() -> websockets.ConnectionClosed:
            async with screen_socket(desk, session_id) as ws:
                with pytest.raises(websockets.ConnectionClosed) as caught:
                    while True:
                        await asyncio.wait_for(ws.recv(), 20)
                return caught.value

        close = asyncio.run(closed()).rcvd
        assert close is not None and close.code == 1011
        assert said in close.reason
        assert desk.wait_state(session_id, "ended")["end_reason"] == "error"
        # the same tunnel all along: connected once, never dropped
        assert online(broker, agent.agent_id)
        assert agent.log.read_text().count("connected to the broker") == 1
    finally:
        desk.close()
        agent.stop()
