"""The broker's SQLite store: users, web sessions, enrolment tokens, agents,
sessions and help requests.

One file in the data folder, WAL mode, schema versions applied in order at open.
The audit log lives in its own file (see ``audit``) so a full audit disk refuses
actions without corrupting this one, and this one can be restored from backup
without touching the evidence.

Every sqlite3 error is translated into ``StoreError`` here, so no library error
travels further up.
"""

from __future__ import annotations

from allowhelp.broker.model.records import (
    ROLES,
    AgentRecord,
    HelpTicket,
    Role,
    TokenSummary,
    TotpState,
    User,
    UserSummary,
    WebSession,
)
from allowhelp.broker.store.fleet import FleetStore
from allowhelp.broker.store.job_rows import JobStore
from allowhelp.broker.store.node_peers import NodePeerStore
from allowhelp.broker.store.nodes import NodeStore
from allowhelp.broker.store.people import PeopleStore
from allowhelp.broker.store.session_extras import SessionExtrasStore
from allowhelp.broker.store.session_rows import SessionStore

__all__ = [
    "ROLES",
    "AgentRecord",
    "HelpTicket",
    "Role",
    "Store",
    "TokenSummary",
    "TotpState",
    "User",
    "UserSummary",
    "WebSession",
]


class Store(
    PeopleStore, FleetStore, SessionStore, JobStore, SessionExtrasStore, NodeStore, NodePeerStore
):
    """Typed access to the broker database; callers never see SQL or sqlite3."""
