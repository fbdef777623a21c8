"""The broker's parts, wired once at start-up and handed to the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.auth.authenticator import Authenticator
from allowhelp.broker.jobs.desk import JobDesk
from allowhelp.broker.relay.node_link import NodeRoute
from allowhelp.broker.sessions.chat import ChatDesk
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.files import FileDesk
from allowhelp.broker.sessions.help import HelpDesk
from allowhelp.broker.sessions.invites import InviteDesk
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.settings import BrokerSettings
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.enrolment import EnrolmentDesk
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.broker.tunnel.listener import TunnelListener


@dataclass
class Services:
    db: StoreWorker  # every store call: await db.run(Store.x, ...) / db.read(...)
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
    keys: EnrolledKeys
    tunnel: TunnelListener  # also takes tunnels that ride the HTTPS port
    jobs: JobDesk  # fleet jobs (broker/jobs/)
    chat: ChatDesk
    files: FileDesk
    invites: InviteDesk  # other technicians on a session, with the PC user's consent (#18)
    nodes: NodeRoute | None = None  # sessions on agents other nodes hold (#21, --node-listen)
