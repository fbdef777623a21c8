"""``run --idle doorbell`` against a real broker: the idle agent is a doorbell, the
full agent starts when the broker rings or a local client connects, and ends after
``--linger``; a refused key is replaced. Real processes, real TLS, real SSH."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path

from harness import (
    Agent,
    Broker,
    Fleet,
    agent_call,
    agent_cli,
    log_mark,
    log_since,
    online,
    wait_for,
)
from terminalkit import shell_says

LINGER = "2"
ENDED = "is idle and ended"


def doorbell_agent(fleet: Fleet, root: Path) -> Agent:
    agent = Agent(root / "agent")
    fleet.agents.append(agent)  # stopped whatever the outcome
    assert agent.enroll(fleet.brokers[0].token()).returncode == 0
    agent.start("--prompt", "none", "--idle", "doorbell", "--linger", LINGER)
    return agent


def said(agent: Agent, since: int, text: str) -> bool:
    return text in log_since(agent.log, since)


def idle_on_the_doorbell(broker: Broker, agent: Agent, since: int, connected: int = 0) -> None:
    """The full agent ended after --linger (logged after ``since``), and the doorbell
    (connected after ``connected``) keeps the PC online."""
    wait_for(lambda: said(agent, since, ENDED), 40, "the full agent to end once idle")
    wait_for(lambda: said(agent, connected, "doorbell connected"), 30, "the doorbell to connect")
    wait_for(lambda: online(broker, agent.agent_id), 10, "the PC online by its doorbell")


def test_first_start_fetches_a_key_then_a_shell_rings_the_agent_awake(
    staffed: Fleet, tmp_path: Path
) -> None:
    broker = staffed.brokers[0]
    agent = doorbell_agent(staffed, tmp_path)
    # no key yet: the full agent starts at once, says "need", saves the key it is sent
    wait_for((agent.config / "doorbell.json").exists, 30, "the doorbell key")
    key = json.loads((agent.config / "doorbell.json").read_text())
    assert key["agent_id"] == agent.agent_id and len(key["token"]) == 43
    for name in ("doorbell.json", "hello.json"):
        assert stat.S_IMODE((agent.config / name).stat().st_mode) == 0o600
    assert json.loads((agent.config / "hello.json").read_text())["doorbell"] == "need"
    idle_on_the_doorbell(broker, agent, 0)
    assert key["token"] not in agent.log.read_text()  # never logged
    # a technician's shell: the broker rings, the full agent starts, the PC allows it
    mark = log_mark(agent.log)
    # (the shell holds none of the agent's sockets, nor their names)
    command = "echo woken-$((6*7))-[$ALLOWHELP_LISTEN_FDS]-$(ls -l /proc/$$/fd | grep -c socket:)\n"
    asyncio.run(shell_says(broker, agent, command, b"woken-42-[]-0"))
    assert said(agent, mark, "the broker rings")
    assert said(agent, mark, "connected to the broker")
    assert json.loads((agent.config / "hello.json").read_text())["doorbell"] == "have"
    # and once the session has ended, idle again: the doorbell stood all along
    idle_on_the_doorbell(broker, agent, mark)
    assert not said(agent, mark, "doorbell connected")


def test_a_local_client_starts_the_full_agent(staffed: Fleet, tmp_path: Path) -> None:
    broker = staffed.brokers[0]
    agent = doorbell_agent(staffed, tmp_path)
    idle_on_the_doorbell(broker, agent, 0)
    mark = log_mark(agent.log)
    status = agent_call(agent, "status", "--json")  # answered by the full agent it starts
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["agent_id"] == agent.agent_id
    assert said(agent, mark, "a local client on the local socket")
    wait_for(lambda: said(agent, mark, ENDED), 40, "the full agent to end again")
    # asking for help from an idle PC: the full agent it wakes waits for its tunnel
    mark = log_mark(agent.log)
    asked = agent_call(agent, "request-help", "--message", "the printer again")
    assert asked.returncode == 0, asked.stderr + log_since(agent.log, mark)
    assert asked.stdout.strip()  # the help code the broker gave
    assert said(agent, mark, "a local client on the local socket")


def test_a_refused_key_is_replaced(staffed: Fleet, tmp_path: Path) -> None:
    broker = staffed.brokers[0]
    agent = doorbell_agent(staffed, tmp_path)
    idle_on_the_doorbell(broker, agent, 0)
    agent.stop()
    assert agent.proc is not None and agent.proc.returncode == 0
    wrong = "B" * 43
    key_file = agent.config / "doorbell.json"
    key_file.write_text(json.dumps({"agent_id": agent.agent_id, "token": wrong}))
    mark = log_mark(agent.log)
    agent.start("--prompt", "none", "--idle", "doorbell", "--linger", LINGER)
    wait_for(lambda: said(agent, mark, "refused the doorbell key"), 30, "the 401")

    def replaced() -> bool:
        try:
            return bool(json.loads(key_file.read_text())["token"] != wrong)
        except (OSError, ValueError):
            return False

    wait_for(replaced, 30, "a new doorbell key")
    idle_on_the_doorbell(broker, agent, mark, mark)
    assert wrong not in log_since(agent.log, mark)


def test_sigterm_stops_the_doorbell_and_its_full_agent(staffed: Fleet, tmp_path: Path) -> None:
    agent = doorbell_agent(staffed, tmp_path)
    wait_for(lambda: said(agent, 0, "starting the full agent"), 30, "the full agent to start")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    assert said(agent, 0, "doorbell stopped")
    # the full agent went with it: nothing answers on the local socket any more
    assert agent_call(agent, "pending").returncode != 0


def test_linger_without_the_doorbell_is_refused(tmp_path: Path) -> None:
    done = agent_cli("run", "--config", str(tmp_path), "--linger", "5")
    assert done.returncode == 2
    assert "--linger needs --idle doorbell" in done.stderr
    assert "Traceback" not in done.stderr
    done = agent_cli("run", "--config", str(tmp_path), "--idle", "doorbell", "--linger", "0")
    assert done.returncode == 2 and "between 1 and 86400" in done.stderr
    done = agent_cli("run", "--config", str(tmp_path), "--idle", "sleepy")
    assert done.returncode == 2 and "is not tunnel or doorbell" in done.stderr
    assert "woken" not in agent_cli("run", "--help").stdout


def test_the_doorbell_in_a_folder_not_enrolled_says_so(tmp_path: Path) -> None:
    done = agent_cli("run", "--config", str(tmp_path), "--idle", "doorbell")
    assert done.returncode == 2 and "not enrolled" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.listdir(tmp_path)
