"""The bounds of every field of the control channel's messages (``control.py``):
text lengths, number ranges, the words a field may hold. Everything received is
checked against these before a message is made (``fields.checked_fields``).
"""

from __future__ import annotations

from allowhelp.protocol.fields import FieldRules
from allowhelp.protocol.kinds import END_REASONS, INVITE_MODES, KINDS, VIAS

# A Hello's ``doorbell``: "" holds the SSH tunnel while idle; "need" / "have" idles on
# a doorbell without / with a valid key (``control.Hello``).
DOORBELL_STATES = ("", "need", "have")
# A Hello's ``files_hidden``: at most this many folders, each an absolute, normal path
# of at most ``LIMITS["files_hidden"]`` characters (``control.checked_hidden``).
MAX_HIDDEN = 4

LIMITS = {
    "session_id": 40,
    "organisation": 100,
    "technician": 100,
    "reason": 500,
    "phrase": 100,
    "help_code": 20,
    "prompt": 4000,
    "ref": 40,
    "message": 500,
    "code": 20,
    "hostname": 253,
    "language": 16,
    "os": 200,
    "user": 64,
    "version": 32,
    "job_id": 40,
    "payload": 15000,
    "signature": 100,
    "state": 20,
    "output": 8000,
    "kernel": 200,
    "packages": 12000,
    "screen": 20,
    "screen_problem": 300,
    "desktop": 200,
    "monitor": 64,
    "monitors": 2000,
    "text": 2000,
    "sender": 100,
    "path": 1000,
    "direction": 10,
    "status": 10,
    "joins": 40,
    "mode": 10,
    "username": 64,
    "token": 64,
    "files_hidden": 1000,  # each folder of a Hello's list
}


# Numbers are durations (below 1e6 s) except these points in time (epoch seconds)
# and a consent request's timeout: under an hour (the broker's own setting stops at
# 600 s), which every prompt on the way can count down (a helper's whole numbers stop
# at 65535: more was a malformed packet there, and ended that user's sessions).
RULES = FieldRules(
    texts=LIMITS,
    numbers={
        "timeout": 3600,
        "started": 1e11,
        "finished": 1e11,
        "last_boot": 1e11,
        "disk_total": 1e17,
        "disk_free": 1e17,
        "memory_total": 1e17,
    },
    # Whole numbers are small (exit codes, counts: -1 to 2**31) except a file's bytes.
    wholes={"size": (-1, 2**63 - 1)},
    choices={
        "Kind": KINDS,
        "Via": VIAS,
        "EndReason": END_REASONS,
        "mode": ("", *INVITE_MODES),
        "doorbell": DOORBELL_STATES,
    },
    ids={"session_id": False, "job_id": False, "joins": True},
)
