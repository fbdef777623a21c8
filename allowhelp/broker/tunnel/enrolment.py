"""Enrolment: a token turns an unknown PC into a known agent, exactly once.

The broker keeps only a hash of each token's secret. What the agent reports
(hostname, OS, user) is hostile text: it is length-limited and stripped of
control characters here, and the console still renders it as text only.

Anyone may call it, logged in or not: refused enrolments are throttled per
address as failed logins are (``model/throttle.py``: 30 in 15 minutes, then 429
with ``retry-after``), so that guessing tokens costs the broker almost nothing and
the audit log gets one ``token.throttled`` per lock, not one record per guess.

An enrolment is recorded before it happens: the token and key are checked
(nothing spent), ``agent.enrolled`` is written, and only then are the token's use
and the agent's key stored, in one transaction (``Store.enrol_agent``, which checks
again). A record that cannot be written refuses the enrolment with the token's use
intact; a store that fails after it gets ``agent.enrol.aborted`` on the chain,
unless the key turns out stored all the same (a COMMIT whose answer was lost): then
it is enrolled, as ``agent.enrolled`` says. A store that cannot say either way:
aborted, ``store_outcome_unknown``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import (
    AuditUnavailable,
    EnrolmentError,
    EnrolmentThrottled,
    StoreError,
)
from allowhelp.broker.model.throttle import LoginThrottle
from allowhelp.broker.store import AgentRecord, Store
from allowhelp.broker.store.worker import StoreWorker
from allowhelp.broker.tunnel.keys import EnrolledKeys
from allowhelp.certs.sshkeys import agent_id_for, parse_public_key, public_key_line
from allowhelp.certs.token import EnrolmentToken, secret_hash
from allowhelp.protocol.control import NodesList
from allowhelp.protocol.text import plain_text

MAX_TTL_SECONDS = 30 * 24 * 3600
MAX_USES = 10_000
_TTL = re.compile(r"^(\d{1,6})([smhd])$")
log = logging.getLogger(__name__)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

REFUSALS = {
    "unknown": "the enrolment token is not known to this broker (mistyped, or made for another)",
    "used": "the enrolment token has already been used: ask for a new one",
    "expired": "the enrolment token has expired: ask for a new one",
    "key_taken": "this host key is already enrolled: enrol with a fresh configuration folder",
}


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match:
        raise ValueError(f"--ttl must look like 30m, 1h or 7d (got {text!r})")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= MAX_TTL_SECONDS:
        raise ValueError("--ttl must be between 1 minute and 30 days")
    return seconds


@dataclass(frozen=True)
class EnrolReply:
    agent_id: str
    tunnel: str | None  # HOST:PORT of the raw SSH port; None when it is off
    tunnel_url: str  # wss://.../api/v1/tunnel: the same SSH on the HTTPS port
    tunnel_key: str
    organisation: str
    # Every live broker node's addresses, as ``nodes.list`` gives them (docs/multinode.md):
    # so a PC whose node is down before it ever connected finds another. None: alone.
    nodes: NodesList | None = None

    def to_json(self) -> dict[str, object]:
        answer: dict[str, object] = {
            "agent_id": self.agent_id,
            "tunnel": self.tunnel,
            "tunnel_url": self.tunnel_url,
            "tunnel_key": self.tunnel_key,
            "organisation": self.organisation,
        }
        if self.nodes is not None:
            answer["nodes"] = {"tunnels": list(self.nodes.tunnels), "urls": list(self.nodes.urls)}
        return answer


class EnrolmentDesk:
    def __init__(
        self,
        db: StoreWorker,
        audit: AuditLog,
        keys: EnrolledKeys,
        *,
        tunnel_public: str | None,
        tunnel_url: str,
        tunnel_key: str,
        organisation: str,
        nodes: Callable[[], NodesList | None] | None = None,
    ) -> None:
        self._db = db
        self._nodes = nodes  # the live nodes' addresses now (node/cluster.py)
        self._audit = audit
        self._keys = keys
        self._tunnel_public = tunnel_public
        self._tunnel_url = tunnel_url
        self._tunnel_key = tunnel_key
        self._organisation = organisation
        self.throttle = LoginThrottle()  # its per-address limit: refused enrolments

    @staticmethod
    def create_token(
        store: Store,
        audit: AuditLog,
        *,
        url: str,
        ca_fingerprint: str,
        ttl: int,
        uses: int,
        actor: str,
    ) -> EnrolmentToken:
        """A new token, audited then stored (the CLI: no event loop)."""
        token = _new_token(url, ca_fingerprint, uses)
        audit.append("token.created", actor=actor, **_created(token, ttl, uses))
        store.add_enrol_token(secret_hash(token.secret), time.time() + ttl, uses, actor)
        return token

    @staticmethod
    async def issue_token(
        db: StoreWorker,
        audit: AuditLog,
        *,
        url: str,
        ca_fingerprint: str,
        ttl: int,
        uses: int,
        actor: str,
    ) -> EnrolmentToken:
        """``create_token`` from the broker's event loop: audit and store off the loop."""
        token = _new_token(url, ca_fingerprint, uses)
        await audit.write("token.created", actor=actor, **_created(token, ttl, uses))
        expires = time.time() + ttl
        await db.run(Store.add_enrol_token, secret_hash(token.secret), expires, uses, actor)
        return token

    async def enrol(self, body: Mapping[str, object], remote: str) -> EnrolReply:
        """Enrol the PC ``body`` describes, or raise why not. A refusal (no valid
        secret; a token unknown, used or expired; a key enrolled already, which needs
        no good token) counts toward ``remote``'s throttle once judged, whether or not
        its record could be written; an enrolment under way or done, and an outage,
        count nothing: PCs enrolling at once behind one address do not lock it."""
        lock = self.throttle.locked_from(remote)
        if lock is not None:
            if lock.first:  # one record per lock, not one per attempt
                try:
                    await self._audit.write(
                        "token.throttled",
                        actor=f"anonymous@{remote}",
                        details={"remote": remote, "retry_after": lock.retry_after},
                    )
                except BaseException:
                    self.throttle.unannounced(lock)  # the next refusal tries again
                    raise
            raise EnrolmentThrottled(lock.retry_after)
        return await self._enrol(body, remote)

    async def _enrol(self, body: Mapping[str, object], remote: str) -> EnrolReply:
        secret = body.get("secret")
        if not isinstance(secret, str) or not 16 <= len(secret) <= 200:
            self.throttle.failed_from(remote)
            raise EnrolmentError("the request carries no valid token secret")
        try:
            key = parse_public_key(str(body.get("host_key", "")))
        except ValueError as exc:
            raise EnrolmentError(f"the agent's host key is not usable: {exc}") from exc
        hashed = secret_hash(secret)
        agent_id = agent_id_for(key)
        # Without proof of the private key, re-enrolling a known key would let a
        # token holder rename another PC; a reinstalled agent makes a new key.
        refusal = await self._db.read(Store.enrol_refusal, hashed, agent_id, time.time())
        if refusal is not None:
            await self._refused(remote, hashed, agent_id, refusal)
        record = AgentRecord(
            id=agent_id,
            public_key=public_key_line(key),
            hostname=plain_text(body.get("hostname"), 253) or "(unnamed)",
            os=plain_text(body.get("os"), 200),
            username=plain_text(body.get("user"), 64),
            version=plain_text(body.get("version"), 32),
            enrolled=time.time(),
            last_seen=None,
            removed=False,
        )
        # The record first: one that cannot be written refuses the enrolment before
        # the token's use is spent (AuditUnavailable, 503; the token can be used again).
        try:
            await self._audit.write(
                "agent.enrolled",
                actor=f"agent:{agent_id}",
                target=agent_id,
                details={
                    "token": hashed[:12],
                    "hostname": record.hostname,
                    "os": record.os,
                    "user": record.username,
                    "version": record.version,
                    "remote": remote,
                },
            )
        except AuditUnavailable as exc:
            raise AuditUnavailable(
                f"{exc.message} (the enrolment token was not used: try again later)"
            ) from exc
        # Then the token's use and the agent's key, in one transaction: both or neither.
        try:
            refusal = await self._db.run(Store.enrol_agent, hashed, time.time(), record)
        except StoreError:  # told 503: the chain must not end at "enrolled"
            stored = await self._stored(record)
            if stored is not True:
                reason = "store_unavailable" if stored is False else "store_outcome_unknown"
                await self._aborted(agent_id, hashed, reason)
                raise
            refusal = None  # committed, its answer lost: enrolled (on the record already)
        if refusal is not None:  # another enrolment took the last use (or the key) meanwhile
            await self._aborted(agent_id, hashed, refusal)
            raise EnrolmentError(REFUSALS[refusal])
        self._keys.enrolled(agent_id, record.public_key)  # the tunnel takes this key from now on
        return EnrolReply(
            agent_id,
            self._tunnel_public,
            self._tunnel_url,
            self._tunnel_key,
            self._organisation,
            self._nodes() if self._nodes is not None else None,
        )

    async def _refused(self, remote: str, hashed: str, agent_id: str, refusal: str) -> NoReturn:
        self.throttle.failed_from(remote)  # counted, whether its record is written or not
        await self._audit.write(
            "token.refused",
            actor=f"anonymous@{remote}",
            target=hashed[:12],
            details={"reason": refusal, "agent_id": agent_id},
        )
        raise EnrolmentError(REFUSALS[refusal])

    async def _stored(self, record: AgentRecord) -> bool | None:
        """After a failed ``enrol_agent``: is this enrolment's key stored anyway (a
        COMMIT whose answer was lost, as PostgreSQL's can be)? None: the store cannot say."""
        try:
            stored = await self._db.read(Store.agent, record.id)
        except StoreError:
            return None
        return (
            stored is not None
            and not stored.removed
            and stored.public_key == record.public_key
            and stored.enrolled == record.enrolled
        )

    async def _aborted(self, agent_id: str, hashed: str, reason: str) -> None:
        """``agent.enrolled`` is written, but the enrolment was not stored."""
        try:
            await self._audit.write(
                "agent.enrol.aborted",
                actor=f"agent:{agent_id}",
                target=agent_id,
                details={"token": hashed[:12], "reason": reason},
            )
        except AuditUnavailable:  # said by the writer already
            log.error("the aborted enrolment of %s is not on the record", agent_id)


def _new_token(url: str, ca_fingerprint: str, uses: int) -> EnrolmentToken:
    if not 1 <= uses <= MAX_USES:
        raise ValueError(f"--uses must be between 1 and {MAX_USES}")
    return EnrolmentToken.new(url, ca_fingerprint)


def _created(token: EnrolmentToken, ttl: int, uses: int) -> dict[str, Any]:
    """The target and details of a ``token.created`` record."""
    return {
        "target": secret_hash(token.secret)[:12],
        "details": {"ttl_seconds": ttl, "uses": uses},
    }
