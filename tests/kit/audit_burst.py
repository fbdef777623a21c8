"""Helper for the kill -9 test: audited actions as fast as possible, until killed.

For each action i: commit the audit record, then make the action take effect
(insert row i into a separate SQLite file). Prints i every 50 actions so the
test knows when to pull the plug. Stops by itself after MAX_ACTIONS or
MAX_SECONDS, so a test that forgets to kill it cannot leave it running.

Usage: python tests/audit_burst.py AUDIT_FILE ACTIONS_FILE [MAX_ACTIONS] [MAX_SECONDS]
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from allowhelp.broker.audit.log import AuditLog


def main(argv: list[str]) -> int:
    audit_path, actions_path = Path(argv[0]), Path(argv[1])
    max_actions = int(argv[2]) if len(argv) > 2 else 20_000
    max_seconds = float(argv[3]) if len(argv) > 3 else 20.0
    deadline = time.monotonic() + max_seconds
    log = AuditLog.open(audit_path)
    actions = sqlite3.connect(actions_path, isolation_level=None)
    actions.execute("CREATE TABLE IF NOT EXISTS actions (i INTEGER PRIMARY KEY)")
    for i in range(1, max_actions + 1):
        if time.monotonic() > deadline:
            break
        log.append(
            "session.requested", actor="technician:burst", target=f"pc{i}", details={"action": i}
        )
        actions.execute("INSERT INTO actions (i) VALUES (?)", (i,))
        if i % 50 == 0:
            print(i, flush=True)
    actions.close()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
