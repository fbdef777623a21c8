"""The enrolled agents' host keys, in memory, for the SSH handshake.

asyncssh asks whether a host key is acceptable synchronously, in the middle
of the handshake (``validate_host_public_key``), on the event loop: no place
to wait for the database, and a locked ``broker.sqlite3`` must not stall
every handshake (and the loop) for its busy timeout. So the keys are loaded
once at start-up and kept here; the two things that change them, enrolment
(``tunnel/enrolment.py``) and removal (``console/api/fleet.py``), run in this
same process and update this map once the store has taken the change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from allowhelp.broker.store import AgentRecord

KeyStatus = Literal["enrolled", "removed", "unknown"]


class EnrolledKeys:
    """Agent id → (its key as an OpenSSH line, removed?)."""

    def __init__(self, records: Iterable[AgentRecord] = ()) -> None:
        self._keys: dict[str, tuple[str, bool]] = {}
        for record in records:
            self._keys[record.id] = (record.public_key, record.removed)

    def status(self, agent_id: str, key_line: str) -> KeyStatus:
        """Whether this key, the one ``agent_id`` derives from, may connect."""
        entry = self._keys.get(agent_id)
        if entry is None or entry[0] != key_line:
            return "unknown"
        return "removed" if entry[1] else "enrolled"

    def enrolled(self, agent_id: str, key_line: str) -> None:
        self._keys[agent_id] = (key_line, False)

    def removed(self, agent_id: str) -> None:
        entry = self._keys.get(agent_id)
        if entry is not None:
            self._keys[agent_id] = (entry[0], True)

    def is_removed(self, agent_id: str) -> bool:
        """Removed from this node's view (``removed`` is called before the agent's
        live connections are closed, so a check right before registering one holds)."""
        entry = self._keys.get(agent_id)
        return entry is not None and entry[1]

    def reload(self, records: Iterable[AgentRecord]) -> None:
        """All keys from the store again: another node enrolled or removed agents
        (``node/cluster.py``, with ``--store``)."""
        self._keys = {record.id: (record.public_key, record.removed) for record in records}

    def __len__(self) -> int:
        return len(self._keys)
