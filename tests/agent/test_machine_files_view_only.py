"""Files, view only, under the machine service: the user's session helper starts
sftp-server read-only (``-R``) for a view-only grant; the PC refuses a write itself.

Root holds the tunnel; the signed-in user's helper starts the program (as in
``test_machine_files.py``). The broker refuses uploads first; here the PC's own
refusal is shown too, by writing through the same SFTP channel's program: its
command line has ``-R``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from machinekit import CAN_RUN, WHY_NOT, Machine, enroll_system, local_users, passable_folder

from harness import ADMIN, ADMIN_PW, TECH, TECH_PW, Broker, Desk, staffed_broker, wait_for

USER = "ahmview"

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT)


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Machine]]:
    with (
        local_users(USER),
        passable_folder() as root,
        staffed_broker(tmp_path_factory.mktemp("mview")) as fleet,
    ):
        broker = fleet.brokers[0]
        machine = Machine(root, enroll_system(broker, root / "machine"))
        try:
            machine.start_service()
            machine.start_helper(USER)

            def signed_in() -> bool:
                agents = broker.agents(ADMIN, ADMIN_PW)
                return any(a["id"] == machine.agent_id and a["signed_in"] == USER for a in agents)

            wait_for(signed_in, 30, "the broker to know who is signed in")
            yield broker, machine
        finally:
            machine.stop()


def test_the_users_helper_starts_a_read_only_sftp_server(pc: tuple[Broker, Machine]) -> None:
    broker, machine = pc
    desk = Desk.login(broker, TECH, TECH_PW)
    try:
        answer = desk.client.post(
            "/api/v1/sessions",
            json={
                "agent_id": machine.agent_id,
                "kind": "files",
                "view_only": True,
                "reason": "read the log",
            },
        )
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        wait_for(
            lambda: any(p["session_id"] == session_id for p in machine.pending(USER)), 15, "prompt"
        )
        assert machine.cli(USER, "allow", session_id).returncode == 0
        desk.wait_state(session_id, "active")
        listed = desk.client.get(f"/api/v1/sessions/{session_id}/files", params={"path": "."})
        assert listed.status_code == 200, listed.text
        found = subprocess.run(
            ["pgrep", "-a", "-u", USER, "-x", "sftp-server"], capture_output=True, check=False
        )
        lines = found.stdout.decode().splitlines()
        assert lines and all(" -R " in f" {line} " for line in lines), lines
        put = desk.client.put(
            f"/api/v1/sessions/{session_id}/files/content", params={"path": "x"}, content=b"x"
        )
        assert put.status_code == 403 and put.json()["error"] == "view_only"
    finally:
        desk.close()
