"""The session report for the ticket system: a signed POST, delivered at least once.

When a session is over (ended, denied or expired) its report (JSON: the
session, PC, technician, kind, reason, ticket, notes, times, end reason,
consent decision, file transfers, chat transcript, recording link) is put in
the store's outbox (``report_outbox``), and ``report.queued`` is audited. A
sender task POSTs what is due to ``serve --webhook URL``, with

    X-Allowhelp-Signature: sha256=HEX(HMAC-SHA256(secret, body))
    X-Allowhelp-Delivery: SESSION_ID   (the same for every retry: deduplicate on it)

A 2xx answer is delivered (``report.delivered``); anything else (a timeout, a
500, a redirect, no connection) is a failure: audited (``report.failed``),
kept in the outbox with its error (``GET /api/v1/reports`` shows admins what
is owed and why) and tried again with exponential backoff (10 s doubling to
1 h). The outbox is in the store, so an undelivered report survives a broker
restart and goes out afterwards. How to check a signature: docs/integrations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import BrokerError
from allowhelp.broker.model.session import Session, State
from allowhelp.broker.store import Store
from allowhelp.broker.store.session_extras import OutboxItem
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.protocol.text import plain_text

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Allowhelp-Signature"
DELIVERY_HEADER = "X-Allowhelp-Delivery"
RETRY_FIRST, RETRY_MAX = 10.0, 3600.0
POST_TIMEOUT = 10.0
IDLE_CHECK = 60.0  # the sender looks at the outbox at least this often


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: bytes = field(repr=False)  # never in a log line


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures."""
    return float(min(RETRY_FIRST * 2 ** max(attempts - 1, 0), RETRY_MAX))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer that is not 2xx: a failure


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body``; the HTTP status, or OSError (urllib.error.URLError) on no answer."""
    if not url.startswith(("http://", "https://")):  # checked at start too (settings)
        raise ValueError("the webhook URL must be http:// or https://")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


class ReportOutbox:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        webhook: Webhook | None,
        *,
        public_url: str,
        timeout: float = POST_TIMEOUT,
    ) -> None:
        self._db = db
        self._audit = audit
        self._webhook = webhook
        self._public_url = public_url
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None

    # queueing (the registry calls this for every session that is over)

    def session_over(self, session: Session) -> None:
        if self._webhook is None:
            return
        task = asyncio.ensure_future(self._queue(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _queue(self, session: Session) -> None:
        try:
            body = await self._body(session)
            await self._db.run(Store.queue_report, session.id, body, time.time())
            await self._audit.write(
                "report.queued",
                actor="system",
                target=session.id,
                details={"session": session.id, "sha256": hashlib.sha256(body).hexdigest()},
            )
        except BrokerError as exc:
            log.error("session=%s: its report could not be queued: %s", session.id, exc)
            return
        self._wake.set()

    async def _body(self, session: Session) -> bytes:
        transfers = await self._db.read(Store.transfers, session.id)
        chat = await self._db.read(Store.chat_lines, session.id)
        report = {
            "type": "session.report",
            "session": session.id,
            "pc": {"agent_id": session.agent_id, "hostname": session.hostname},
            "technician": {"username": session.technician, "name": session.technician_name},
            "kind": session.kind,
            "reason": session.reason,
            "ticket": session.ticket,
            "notes": session.notes,
            "help_code": session.help_code,
            "times": {
                "created": session.created,
                "decided": session.decided,
                "started": session.started,
                "ended": session.ended,
            },
            "end_reason": session.end_reason,
            "consent": {
                "decision": _decision(session),
                "decided": session.decided,
                "view_only": session.view_only,
            },
            "bytes": {"to_pc": session.bytes_to_agent, "from_pc": session.bytes_from_agent},
            "file_transfers": [t.to_json() for t in transfers],
            "chat": [line.to_json() for line in chat],
            "recording": (
                {
                    "url": f"{self._public_url}/replay.html?session={session.id}",
                    "sha256": session.recording_sha256,
                }
                if session.recording
                else None
            ),
        }
        return json.dumps(report, ensure_ascii=False, sort_keys=True).encode()

    # sending

    async def start(self) -> None:
        """Send what is owed, an earlier run's reports first (tried again at once)."""
        if self._webhook is None or self._sender is not None:
            return
        try:
            owed = await self._db.run(Store.retry_reports_now, time.time())
        except BrokerError as exc:
            log.error("the report outbox cannot be read: %s", exc)
            owed = 0
        if owed:
            log.info("%d session report(s) owed to the ticket system: sending", owed)
        self._sender = asyncio.create_task(self._send_forever(self._webhook))

    async def flush(self, patience: float = 10.0) -> None:
        """Wait (bounded) until the reports of sessions just ended are in the outbox."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=patience)

    async def close(self) -> None:
        """Reports of sessions just ended into the outbox first (bounded), then stop."""
        await self.flush()
        tasks = [*self._tasks, *([self._sender] if self._sender else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sender = None

    async def _send_forever(self, webhook: Webhook) -> None:
        while True:
            try:
                for item in await self._db.read(Store.due_reports, time.time()):
                    await self._deliver(webhook, item)
                due = await self._db.read(Store.next_report_due)
            except BrokerError as exc:
                log.error("the report outbox cannot be read: %s", exc)
                due = None
            wait = IDLE_CHECK if due is None else max(0.0, min(due - time.time(), IDLE_CHECK))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, webhook: Webhook, item: OutboxItem) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "allowhelp-broker",
            SIGNATURE_HEADER: signature(webhook.secret, item.body),
            DELIVERY_HEADER: item.session_id,
        }
        try:
            status = await asyncio.to_thread(post, webhook.url, item.body, headers, self._timeout)
            error = "" if 200 <= status < 300 else f"the ticket system answered HTTP {status}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            reason = getattr(exc, "reason", exc)
            error = plain_text(f"no answer from the ticket system: {reason}", 300)
        now = time.time()
        details = {"session": item.session_id, "attempt": item.attempts + 1}
        if not error:
            await self._db.run(Store.report_delivered, item.id, now)
            await self._audit.write(
                "report.delivered", actor="system", target=item.session_id, details=details
            )
            return
        retry = now + backoff(item.attempts + 1)
        await self._db.run(Store.report_failed, item.id, error, retry)
        log.warning("session=%s report not delivered: %s", item.session_id, error)
        with contextlib.suppress(BrokerError):  # the outbox has it; the log line too
            await self._audit.write(
                "report.failed",
                actor="system",
                target=item.session_id,
                details={**details, "error": error, "next_attempt": retry},
            )


def _decision(session: Session) -> str:
    if session.state is State.DENIED:
        return "denied"
    if session.state is State.EXPIRED:
        return "expired"
    return "granted" if session.started else "none"
