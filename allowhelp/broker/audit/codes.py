"""The audit log's event types and their stable codes (``AHxxxx``).

Codes appear in exports and in syslog (MSGID), and collectors' alert rules
match on them: a code, once assigned, never changes and is never reused. Add
new types with new codes only.
"""

from __future__ import annotations

EVENT_CODES: dict[str, str] = {
    # authentication (AH10xx)
    "auth.login.ok": "AH1001",
    "auth.login.failed": "AH1002",
    "auth.login.throttled": "AH1003",
    "auth.logout": "AH1004",
    "auth.totp.enrolled": "AH1005",
    "auth.totp.reset": "AH1006",
    # user accounts (AH11xx)
    "user.created": "AH1101",
    "user.updated": "AH1102",
    "user.disabled": "AH1103",
    "user.role_changed": "AH1104",
    # enrolment tokens (AH12xx)
    "token.created": "AH1201",
    "token.used": "AH1202",
    "token.refused": "AH1203",
    # agents (AH13xx)
    "agent.enrolled": "AH1301",
    "agent.connected": "AH1302",
    "agent.disconnected": "AH1303",
    "agent.refused": "AH1304",
    "agent.removed": "AH1305",
    # sessions and consent (AH14xx)
    "session.requested": "AH1401",
    "consent.asked": "AH1402",
    "consent.granted": "AH1403",
    "consent.denied": "AH1404",
    "consent.expired": "AH1405",
    "session.started": "AH1406",
    "session.ended": "AH1407",
    "session.failed": "AH1408",
    "help.requested": "AH1409",
    # the broker itself (AH19xx)
    "broker.started": "AH1901",
    "broker.stopped": "AH1902",
    "request.refused": "AH1903",
    # console administration (appended: codes above never change)
    "auth.policy.changed": "AH1007",
    "token.revoked": "AH1204",
    "session.replayed": "AH1410",
    "help.refused": "AH1411",
    # connectivity, coalesced (docs/audit.md): a flapping agent's connects and
    # disconnects summed up, and failed tunnel handshakes per address
    "agent.flapping": "AH1306",
    "tunnel.refused": "AH1307",
    # the chain itself: found broken (at start-up or by the background check)
    "audit.chain_broken": "AH1904",
    # a shell recording that stopped before its session (cap, low space, write error)
    "recording.stopped": "AH1412",
    # a login recorded as ok whose web session could not be made: the user was told it failed
    "auth.login.aborted": "AH1008",
    # an admin asked to lower require_approval from 2: it changes when a second admin asks too
    "auth.policy.asked": "AH1009",
    # the data folder backed up (`allowhelp-broker backup`, written before the snapshot)
    # and restored from a backup (`allowhelp-broker restore`, the restored chain's first new record)
    "broker.backup": "AH1906",
    "broker.restored": "AH1907",
    # the anchor file missing (or holding no head) at start while the chain has records:
    # made again from this record on, which it names (audit/opening.py)
    "audit.anchors.missing": "AH1908",
    # a node's first start on a shared chain with records (no node.id in its folder yet):
    # its own anchor file begins at this record, marked restarted, no alarm (audit/opening.py)
    "audit.anchors.begun": "AH1909",
    # fleet jobs (AH16xx, issue #20): created (who, why, targets, script digest),
    # approved by a second admin, each PC's result (exit code, output digest),
    # expired unanswered; a machine's groups changed
    "job.created": "AH1601",
    "job.approved": "AH1602",
    "job.result": "AH1603",
    "job.expired": "AH1604",
    "agent.groups_changed": "AH1605",
    # a job whose stored row no longer matches the broker's seal: changed outside
    # allowhelp (the database alone), never sent
    "job.tampered": "AH1606",
    # an admin cancelled a job: no PC that has not answered gets it from then on
    "job.cancelled": "AH1607",
    # an approval refused: the approving admin's account was made after the job
    "job.approval.refused": "AH1608",
    # files, chat, ticket and notes, the session report (AH15xx, issue #17)
    "files.listed": "AH1501",
    "files.transfer.started": "AH1502",
    "files.transfer.done": "AH1503",
    "files.transfer.failed": "AH1504",
    "session.notes": "AH1505",
    "chat.sent": "AH1506",
    "report.queued": "AH1507",
    "report.delivered": "AH1508",
    "report.failed": "AH1509",
    # a write asked of a view-only files session, refused by the broker (nothing sent)
    "files.refused": "AH1510",
    # invitations and participants (AH17xx, issue #18): who invited whom, how
    # (observe/control), the PC user's answer, the owner's revocation, each join and
    # leave, the PC user removing someone, and a technician refused at the door
    "invite.asked": "AH1701",
    "invite.granted": "AH1702",
    "invite.denied": "AH1703",
    "invite.expired": "AH1704",
    "invite.revoked": "AH1705",
    "participant.joined": "AH1706",
    "participant.left": "AH1707",
    "participant.removed": "AH1708",
    "participant.refused": "AH1709",
    # recordings (AH18xx, issue #18): a replay refused (the file no longer matches
    # its digest, or the chain cannot vouch for it), a recording deleted by retention
    # (`serve --recordings-keep`, written before the file goes)
    "recording.refused": "AH1801",
    "recording.expired": "AH1802",
    # routing between broker nodes (AH20xx, issue #21): a technician's session relayed
    # to the node holding the agent's tunnel (written by the technician's node before it
    # relays), that node gone mid-session, and a peer refused at the node listener
    # (its certificate names no live node)
    "session.relayed": "AH2001",
    "session.relay_lost": "AH2002",
    "node.peer_refused": "AH2003",
    # several nodes (AH2011-AH2019, issue #21): the live tunnel of an agent removed on
    # another node, dropped by the node holding it within a heartbeat of the removal
    "agent.tunnel.dropped": "AH2011",
    # relayed requests (AH2021-AH2029, issue #21): a technician's state-changing HTTP
    # request passed to the node running the session or holding the agent, written by
    # the technician's node before it goes (reads are not: docs/multinode.md)
    "request.relayed": "AH2021",
    # enrolment throttled (appended): one address's refused enrolments past the limit,
    # one record per lock (as auth.login.throttled), none per refused attempt after it
    "token.throttled": "AH1205",
    # enrolment aborted (appended): an ``agent.enrolled`` whose token use and key could
    # not be stored (or whose token's last use another enrolment took meanwhile)
    "agent.enrol.aborted": "AH1308",
}

# The syslog MSGID of a head anchor line (``audit/anchor.py``). It is not a
# record type (an anchor is a copy of the head, not a link of the chain), but
# it is taken: no event type may ever get this code.
ANCHOR_MSGID = "AH1905"
