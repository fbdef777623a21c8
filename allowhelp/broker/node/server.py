"""One broker process: HTTPS (uvicorn) and the tunnel listener, started and stopped together.

Sockets are bound here before anything is announced, so port 0 works (tests)
and ``broker.json`` only ever names addresses that are really listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from allowhelp.broker.audit.integrity import ChainWatch
from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.audit.retention import start_retention, stop_retention
from allowhelp.broker.auth.authenticator import Authenticator, name_key_from
from allowhelp.broker.console.app import create_app
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import TunnelError
from allowhelp.broker.jobs.desk import JobDesk
from allowhelp.broker.jobs.inventory import MachineInventory
from allowhelp.broker.model.session import Session
from allowhelp.broker.node.cluster import NodeMembership, node_id_of
from allowhelp.broker.node.datafolder import DataFolder, tls_hosts
from allowhelp.broker.node.front import (
    Exporter,
    Uvicorn,
    address_of,
    bind_front,
    close_sockets,
    console_config,
    counted_metrics,
    serve_metrics,
    started,
)
from allowhelp.broker.node.limits import announce_fd_limit, raise_fd_limit
from allowhelp.broker.node.peers import NodeAnnouncer
from allowhelp.broker.node.relay_listener import NodeRelayListener, start_node_relay
from allowhelp.broker.node.tls import CertificateFiles, ConsoleTLS, ServedCertificate, load_pair
from allowhelp.broker.sessions.chat import ChatDesk
from allowhelp.broker.sessions.events import EventHub
from allowhelp.broker.sessions.files import FileDesk
from allowhelp.broker.sessions.help import HelpDesk
from allowhelp.broker.sessions.invites import InviteDesk
from allowhelp.broker.sessions.registry import SessionRegistry
from allowhelp.broker.sessions.report import ReportOutbox, Webhook
from allowhelp.broker.settings import BrokerSettings, RuntimeInfo, format_hostport, url_host
from allowhelp.broker.store import Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.agents import AgentRegistry
from allowhelp.broker.tunnel.dispatch import ControlRouter, Inventory
from allowhelp.broker.tunnel.enrolment import EnrolmentDesk
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.broker.tunnel.listener import TunnelListener
from allowhelp.certs.jobsign import JobSigner
from allowhelp.protocol.control import (
    ChatMessage,
    ConsentDecision,
    FileTransfer,
    Hello,
    HelpRequest,
    InventoryReport,
    JobResult,
    SessionEnd,
)
from allowhelp.wsbridge import PATH as TUNNEL_PATH

log = logging.getLogger(__name__)


def control_router(
    db: StoreWorker,
    agents: AgentRegistry,
    sessions: SessionRegistry,
    help_desk: HelpDesk,
    *,
    jobs: JobDesk | None = None,
    chat: ChatDesk | None = None,
    invites: InviteDesk | None = None,
) -> ControlRouter:
    """Each message an agent may send, and the part of the broker that owns it."""
    router = ControlRouter()
    router.route(Hello, Inventory(db, agents).hello)
    # Invitations (#18) take the answers and ends of their own ids, the rest to sessions.
    router.route(ConsentDecision, invites.on_decision if invites else sessions.on_decision)
    router.route(SessionEnd, invites.on_user_end if invites else sessions.on_user_end)
    router.route(HelpRequest, help_desk.request)
    if jobs is not None:
        router.route(JobResult, jobs.on_result)
        router.route(InventoryReport, MachineInventory(db).report)
    if chat is not None:
        router.route(ChatMessage, chat.from_agent)
    return router


async def serve(settings: BrokerSettings, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then close everything cleanly."""
    admin_tls = _admin_certificate(settings)  # a bad file stops here, before anything is made
    announce_fd_limit(raise_fd_limit())
    folder = DataFolder.open(
        settings.data_dir, tls_hosts(settings), settings.syslog_url, settings.audit, settings.store
    )
    try:
        node_id = node_id_of(settings.data_dir)  # this broker as a node (node/cluster.py)
        db = await StoreWorker.open(folder.store_path, node_id)  # the store, off the event loop
    except BaseException:
        folder.close()
        raise
    try:
        # The tunnel checks keys in memory: asyncssh asks mid-handshake, synchronously.
        keys = EnrolledKeys(await db.read(Store.agents, with_removed=True))
        await _serve(settings, folder, db, keys, stop=stop, admin_tls=admin_tls)
    finally:
        await db.close()
        folder.close()
        log.info("allowhelp broker stopped")


def _on_signals(stop: asyncio.Event, tls: ConsoleTLS) -> None:
    """SIGTERM/SIGINT stop the broker; SIGHUP reads a renewed ``--tls-cert``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, tls.reload)


@dataclass(frozen=True)
class _Routes:
    """The two ways agents reach this broker: the SSH port (None: ``--tunnel off``)
    and the same SSH inside a WebSocket on the HTTPS port (``wsbridge.py``)."""

    ssh: str | None
    https: str

    @classmethod
    def of(cls, public_url: str, tunnel_port: int | None) -> _Routes:
        ssh = format_hostport(url_host(public_url), tunnel_port) if tunnel_port else None
        return cls(ssh, "wss://" + public_url.removeprefix("https://") + TUNNEL_PATH)

    def __str__(self) -> str:
        return f"{self.ssh} or {self.https}" if self.ssh else f"{self.https} only"


async def _serve(  # noqa: PLR0915 - the one place that wires and unwinds every part, in order
    settings: BrokerSettings,
    folder: DataFolder,
    db: StoreWorker,
    keys: EnrolledKeys,
    *,
    stop: asyncio.Event | None,
    admin_tls: tuple[CertificateFiles, ServedCertificate] | None = None,
) -> None:
    tls = ConsoleTLS(load_pair(folder.pki.tls_cert, folder.pki.tls_key), admin_tls)
    https_sock, metrics_sock = bind_front(settings)
    https_port = https_sock.getsockname()[1]
    public_url = settings.public_url or f"https://localhost:{https_port}"
    stop = stop or asyncio.Event()
    _on_signals(stop, tls)
    registry = AgentRegistry()
    events = EventHub()
    help_desk = HelpDesk(db, folder.audit, events, registry)
    sessions = SessionRegistry(
        db,
        folder.audit,
        registry,
        events,
        help_desk,
        organisation=settings.organisation,
        consent_timeout=settings.consent_timeout,
    )
    jobs = JobDesk(
        db,
        folder.audit,
        registry,
        JobSigner.load(folder.pki.tunnel_key),  # the key agents pinned (certs/jobsign.py)
        lambda event: events.publish(event, audience="admins"),
    )
    chat, files, reports, invites = _session_extras(
        settings, sessions, events, db=db, audit=folder.audit, public_url=public_url
    )
    tunnel = TunnelListener(
        db,
        folder.audit,
        registry,
        folder.pki.tunnel_key,
        control_router(db, registry, sessions, help_desk, jobs=jobs, chat=chat, invites=invites),
        keys=keys,
        window=settings.audit.window,
        burst=settings.audit.burst,
    )
    metrics = counted_metrics(folder.audit, registry, tunnel) if metrics_sock is not None else None
    # The chain is checked before anything is served (audit/integrity.py).
    chain_watch = ChainWatch(folder.audit, settings.audit, settings.data_dir)
    exporter: Exporter | None = None
    membership = NodeMembership(
        db, sessions, keys, store=settings.store, events=events, announcer=NodeAnnouncer(registry),
        agents=registry, audit=folder.audit,
    )  # fmt: skip
    retention: asyncio.Task[None] | None = None  # --recordings-keep (audit/retention.py)
    node_relay: NodeRelayListener | None = None  # --node-listen (node/relay_listener.py)
    try:
        await chain_watch.start()
        await _announce_start(folder.audit, tls)
        # This node's earlier sessions end as broker_restart; then it beats (node/cluster.py).
        await membership.join(public_url, settings.tunnel_host or "off", settings.recordings_dir)
        retention = start_retention(settings.recordings_dir, settings.recordings_keep, folder.audit)
        jobs.start()
        await reports.start()  # reports owed by an earlier run go out now
        tunnel_port = await tunnel.start(settings.tunnel_host, settings.tunnel_port)
        routes = _Routes.of(public_url, tunnel_port)
        await membership.advertise(public_url, routes.ssh or "off")  # for failover (#21)
        svc = Services(
            db=db,
            audit=folder.audit,
            auth=Authenticator(
                db,
                folder.audit,
                settings.web_session_hours,
                name_key=name_key_from(folder.pki.tunnel_key),  # shared by the nodes
            ),
            registry=registry,
            enrolment=EnrolmentDesk(
                db,
                folder.audit,
                keys,
                tunnel_public=routes.ssh,
                tunnel_url=routes.https,
                tunnel_key=folder.pki.tunnel_public_key,
                organisation=settings.organisation,
                nodes=membership.agent_nodes,  # the other nodes, for first contact (#21)
            ),
            ca_pem=folder.pki.ca_cert.read_bytes(),
            public_url=public_url,
            settings=settings,
            events=events,
            sessions=sessions,
            help_desk=help_desk,
            keys=keys,
            tunnel=tunnel,
            jobs=jobs,
            chat=chat,
            files=files,
            invites=invites,
        )
        app = create_app(svc)
        # Sessions on agents held by other nodes, and theirs on ours (#21, routing).
        node_relay = await start_node_relay(
            settings.node_relay, settings.data_dir, db, folder.audit, app
        )
        svc.nodes = node_relay.route if node_relay is not None else None
        if node_relay is not None:  # our agents' hello details, for the others' lists
            node_relay.share_agents(registry)
        server = Uvicorn(console_config(app, folder.pki, tls, settings.trusted_proxies))
        serving = asyncio.create_task(server.serve(sockets=[https_sock]))
        await started(server, serving)
        exporter = await serve_metrics(metrics, metrics_sock)
        RuntimeInfo(
            public_url=public_url,
            https=format_hostport(settings.https_host, https_port),
            tunnel=(
                format_hostport(settings.tunnel_host, tunnel_port)
                if settings.tunnel_host is not None and tunnel_port is not None
                else "off"
            ),
            tunnel_public=routes.ssh or "off",
            pid=os.getpid(),
            metrics=address_of(metrics_sock),
        ).write(settings.data_dir)
        log.info("allowhelp broker ready: console %s, agents dial %s", public_url, routes)
        await _until(stop, serving)
        server.should_exit = True
        await sessions.shutdown()
        await stop_retention(retention)
        await tunnel.stop()
        await serving
        if node_relay is not None:
            await node_relay.stop()
        await folder.audit.write("broker.stopped", actor="system", details={"pid": os.getpid()})
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            asyncio.get_running_loop().remove_signal_handler(sig)
        await tunnel.stop()
        if node_relay is not None:
            await node_relay.stop()
        await membership.close()
        await stop_retention(retention)
        await jobs.stop()
        await reports.close()
        await chain_watch.close()
        if exporter is not None:
            await exporter.stop()
        close_sockets(https_sock, metrics_sock)


async def _announce_start(audit: AuditLog, tls: ConsoleTLS) -> None:
    started = {"pid": os.getpid(), "console_certificate": tls.served.fingerprint}
    await audit.write("broker.started", actor="system", details=started)


def _session_extras(
    settings: BrokerSettings,
    sessions: SessionRegistry,
    events: EventHub,
    *,
    db: StoreWorker,
    audit: AuditLog,
    public_url: str,
) -> tuple[ChatDesk, FileDesk, ReportOutbox, InviteDesk]:
    """Chat, files and the session report (issue #17), invitations (#18), wired to
    the registry."""
    agents = sessions.agents
    chat = ChatDesk(sessions, agents, db, events)
    files = FileDesk(
        sessions,
        audit,
        db,
        call_timeout=settings.files_timeout,
        notify=_transfer_notice(sessions),
    )
    webhook = (
        Webhook(settings.webhook_url, settings.webhook_secret) if settings.webhook_url else None
    )
    reports = ReportOutbox(db, audit, webhook, public_url=public_url)
    sessions.on_final(reports.session_over)
    invites = InviteDesk(
        sessions,
        audit,
        db,
        events,
        organisation=settings.organisation,
        consent_timeout=settings.consent_timeout,
    )
    return chat, files, reports, invites


def _transfer_notice(sessions: SessionRegistry) -> Callable[[Session, FileTransfer], None]:
    """Tell the PC of each file transfer (its session window lists them), when it listens:
    over the session's own tunnel (``SessionBook.session_link``), never a newer one."""

    def notify(session: Session, message: FileTransfer) -> None:
        live = sessions.agents.get(session.agent_id)
        link = sessions.session_link(session.id)
        if live is not None and live.chat and link is not None:
            with contextlib.suppress(TunnelError):
                link.send(message)

    return notify


async def _until(stop: asyncio.Event, serving: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, serving}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _admin_certificate(
    settings: BrokerSettings,
) -> tuple[CertificateFiles, ServedCertificate] | None:
    """``--tls-cert``/``--tls-key``, read and checked (``ValueError``: one line)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    files = CertificateFiles(settings.tls_cert, settings.tls_key)
    return files, files.load()
