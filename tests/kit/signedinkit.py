"""A PC with the machine service and a user signed in: the set-up the machine tests share.

Real local users (``machinekit.local_users``), a real broker with an admin and a
technician (``harness.staffed_broker``), the machine service enrolled with
``enroll --system`` in a folder the users may pass through, and their session
helpers started in the order given: the last one's user is the one signed in
(the newest helper). Given once the broker lists the PC online with that user
signed in; everything stopped and the users removed after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from machinekit import Machine, enroll_system, local_users, passable_folder

from harness import Broker, staffed_broker, wait_for


@contextmanager
def signed_in_pc(
    folder: Path,
    users: Sequence[str],
    *,
    helpers: Sequence[str] | None = None,
    broker_args: tuple[str, ...] = (),
    timeout: float = 30,
) -> Iterator[tuple[Broker, Machine]]:
    """``users`` are made; ``helpers`` (default: ``users``, in order) are started."""
    started = list(users if helpers is None else helpers)
    with (
        local_users(*users),
        passable_folder() as root,
        staffed_broker(folder, broker_args=broker_args) as fleet,
    ):
        broker = fleet.brokers[0]
        machine = Machine(root, enroll_system(broker, root / "machine"))
        try:
            machine.start_service()
            for user in started:
                machine.start_helper(user)
            expected = started[-1] if started else None

            def signed_in() -> bool:
                row = machine.agent_row(broker)
                return bool(row["online"]) and row["signed_in"] == expected

            wait_for(signed_in, timeout, f"the broker to know {expected} is signed in")
            yield broker, machine
        finally:
            machine.stop()
