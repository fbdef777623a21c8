"""The broker's parts, wired once at start-up and handed to the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass

from .audit import AuditLog
from .auth import Authenticator
from .enrolment import EnrolmentDesk
from .events import EventHub
from .help import HelpDesk
from .registry import AgentRegistry
from .sessions import SessionRegistry
from .settings import BrokerSettings
from .store import Store


@dataclass
class Services:
    store: Store
    audit: AuditLog
    auth: Authenticator
    registry: AgentRegistry
    enrolment: EnrolmentDesk
    ca_pem: bytes
    public_url: str
    settings: BrokerSettings
    events: EventHub
    sessions: SessionRegistry
    help_desk: HelpDesk
