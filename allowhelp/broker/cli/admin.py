"""Offline administration on a data folder: users and enrolment tokens.

These run while the broker may be running too; both use SQLite transactions
on the same files, and the audit chain stays one chain (seq is assigned
inside the write transaction).
"""

from __future__ import annotations

import os
from pathlib import Path

from allowhelp.broker.audit.opening import SinkedAudit, open_for_cli
from allowhelp.broker.auth.passwords import check_new_password, hash_password
from allowhelp.broker.model.database import PostgresUrl
from allowhelp.broker.node.datafolder import AUDIT_FILE, STORE_FILE
from allowhelp.broker.settings import RuntimeInfo
from allowhelp.broker.store import ROLES, Role, Store
from allowhelp.broker.tunnel.enrolment import EnrolmentDesk, parse_ttl
from allowhelp.certs.pki import ca_fingerprint

MAX_NAME = 64


def prepare(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


def check_username(name: str) -> str:
    if not 1 <= len(name) <= MAX_NAME or not all(ch.isalnum() or ch in "._-@" for ch in name):
        raise ValueError(
            f"a user name is 1 to {MAX_NAME} letters, digits or . _ - @ (got {name!r})"
        )
    return name


def add_user(
    data_dir: Path,
    name: str,
    role: str,
    password: str,
    *,
    full_name: str | None = None,
    store: PostgresUrl | None = None,
) -> None:
    check_username(name)
    if role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}")
    check_new_password(password)
    prepare(data_dir)
    db, opened = _open(data_dir, store)
    audit = opened.audit
    try:
        if db.user_by_name(name) is not None:
            raise ValueError(f"a user named {name!r} already exists")
        typed_role: Role = "admin" if role == "admin" else "technician"
        audit.append("user.created", actor="system:cli", target=name, details={"role": role})
        db.add_user(name, (full_name or name).strip()[:100], typed_role, hash_password(password))
    finally:
        db.close()
        opened.close()


def create_token(data_dir: Path, *, ttl: str, uses: int, store: PostgresUrl | None = None) -> str:
    seconds = parse_ttl(ttl)
    runtime = RuntimeInfo.read(data_dir)
    fingerprint = ca_fingerprint((data_dir / "ca.pem").read_bytes())
    db, opened = _open(data_dir, store)
    try:
        token = EnrolmentDesk.create_token(
            db,
            opened.audit,
            url=runtime.public_url,
            ca_fingerprint=fingerprint,
            ttl=seconds,
            uses=uses,
            actor="system:cli",
        )
    finally:
        db.close()
        opened.close()
    return token.encode()


def _open(data_dir: Path, store: PostgresUrl | None) -> tuple[Store, SinkedAudit]:
    """The store and the audit log (the data folder's files, or the shared database),
    the log with the syslog and anchor file ``serve`` uses (audit/opening.py)."""
    db = Store.open(store or data_dir / STORE_FILE)
    try:
        opened = open_for_cli(store or data_dir / AUDIT_FILE, data_dir)
    except BaseException:
        db.close()
        raise
    return db, opened
