"""The backup file's format, shared by ``backup`` and ``restore`` (docs/backup.md).

One tar file (plain, or gzip when its name ends in ``.gz``/``.tgz``)::

    data/broker.sqlite3          snapshot by SQLite's online backup API
    data/audit.sqlite3           likewise, taken after the store (see backup.py)
    data/ca.pem  data/ca.key  data/tls.pem  data/tls.key  data/tunnel_key
    data/audit.anchors           when present (the default anchor file)
    data/broker.json             when present (what the agents dial)
    data/recordings/ID.cast|rfb  every recording (shell, screen), as it was on disk
    manifest.json                last: what is above, each with its SHA-256

A backup of a node on PostgreSQL (``--store``, ``pg_backup.py``) holds
``data/postgresql.dump`` (``pg_dump --format=custom`` of the shared database, in the
same snapshot as the manifest's audit head) instead of the two SQLite files, and its
manifest says ``"store": "postgresql"``; a restore loads the dump into an empty
database and leaves no dump in the data folder.

``data/`` is exactly the folder a restore makes, so ``tar xf`` by hand gives a
usable data folder too. The manifest comes last because a recording still
being written is hashed as it is copied; a reader checks every member against
it before anything is put in place.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allowhelp.broker.audit.anchor import ANCHOR_FILE
from allowhelp.broker.errors import BackupError
from allowhelp.broker.node.datafolder import AUDIT_FILE, STORE_FILE
from allowhelp.broker.settings import RECORDINGS, RUNTIME_FILE

FORMAT = "allowhelp-broker-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA = "data"
MANIFEST_MAX = 64 << 20  # bytes: a manifest for a million recordings fits

# The PKI (certs/pki.py): agents pin the CA and the tunnel key; losing either
# strands every enrolled PC. The TLS pair is re-issued under the CA if lost.
PKI_FILES = ("ca.pem", "ca.key", "tls.pem", "tls.key", "tunnel_key")
REQUIRED = (*PKI_FILES, STORE_FILE, AUDIT_FILE)
PG_DUMP = "postgresql.dump"  # a PostgreSQL store's dump (pg_backup.py)
PG_REQUIRED = (*PKI_FILES, PG_DUMP)
OPTIONAL = (ANCHOR_FILE, RUNTIME_FILE)
STORES = ("sqlite", "postgresql")
RECORDING_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.(?:cast|rfb)")  # shell, screen
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEAD = re.compile(r"[0-9]+:[0-9a-f]{64}")


def is_member_path(path: str) -> bool:
    """A path inside the data folder that a backup may hold (nothing else is
    ever written by a restore: no ``..``, no absolute path, no other name)."""
    if path in REQUIRED or path in OPTIONAL or path == PG_DUMP:
        return True
    folder, _, name = path.partition("/")
    return folder == RECORDINGS and RECORDING_NAME.fullmatch(name) is not None


def fsync_dir(folder: Path) -> None:
    """A rename or a new file in ``folder`` survives a crash only once this returns."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(exc: OSError) -> str:
    """An OSError as an operator reads it: what went wrong, and with which file."""
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def member_name(path: str) -> str:
    return f"{DATA}/{path}"


def path_of_member(name: str) -> str | None:
    """The data-folder path a tar member stands for, or None when it is not ours."""
    prefix, _, path = name.partition("/")
    return path if prefix == DATA and is_member_path(path) else None


@dataclass(frozen=True)
class FileEntry:
    path: str  # inside the data folder, e.g. "ca.key" or "recordings/ID.cast"
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    allowhelp_version: str
    created: str  # UTC, ISO 8601
    source_host: str
    source_data: str
    source_recordings: str
    audit_head: str  # SEQ:HASH of the snapshot's audit log
    store_schema: int
    open_sessions: tuple[str, ...]  # live at backup time: end as broker_restart after restore
    tunnel_public: str | None  # what the agents dial (broker.json), when known
    public_url: str | None
    files: tuple[FileEntry, ...] = field(default=())
    store: str = "sqlite"  # or "postgresql": the database is a dump (pg_backup.py)

    def to_bytes(self) -> bytes:
        body: dict[str, object] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "allowhelp_version": self.allowhelp_version,
            "created": self.created,
            "source": {
                "host": self.source_host,
                "data": self.source_data,
                "recordings": self.source_recordings,
            },
            "audit_head": self.audit_head,
            "store_schema": self.store_schema,
            "open_sessions": list(self.open_sessions),
            "tunnel_public": self.tunnel_public,
            "public_url": self.public_url,
            "files": [entry.to_json() for entry in self.files],
        }
        if self.store != "sqlite":  # a SQLite backup's manifest stays as it always was
            body["store"] = self.store
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        """Read a manifest, refusing anything this code did not write."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise BackupError(
                f"{where} is not an allowhelp broker backup (its manifest is not JSON)"
            ) from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BackupError(f"{where} is not an allowhelp broker backup (no {FORMAT} manifest)")
        version = body.get("format_version")
        if version != FORMAT_VERSION:
            raise BackupError(
                f"{where} is a backup of format version {version!r}; this allowhelp reads "
                f"version {FORMAT_VERSION}: restore it with the allowhelp that made it"
            )
        try:
            return cls._from_json(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"{where} has a damaged manifest ({exc})") from exc

    @classmethod
    def _from_json(cls, body: dict[str, Any]) -> Manifest:
        source = body["source"]
        head = str(body["audit_head"])
        if not _HEAD.fullmatch(head):
            raise ValueError(f"audit_head {head!r} is not SEQ:HASH")
        store = str(body.get("store", "sqlite"))
        if store not in STORES:
            raise ValueError(f"store {store!r} is not one of {', '.join(STORES)}")
        return cls(
            allowhelp_version=str(body["allowhelp_version"]),
            created=str(body["created"]),
            source_host=str(source["host"]),
            source_data=str(source["data"]),
            source_recordings=str(source["recordings"]),
            audit_head=head,
            store_schema=int(body["store_schema"]),
            open_sessions=tuple(str(s) for s in body["open_sessions"]),
            tunnel_public=_optional(body.get("tunnel_public")),
            public_url=_optional(body.get("public_url")),
            files=tuple(_entry(item) for item in body["files"]),
            store=store,
        )

    def entries(self) -> dict[str, FileEntry]:
        """The files by path; a path listed twice, or missing a required file, is damage."""
        found: dict[str, FileEntry] = {}
        for entry in self.files:
            if entry.path in found:
                raise BackupError(f"the manifest lists {entry.path} twice")
            found[entry.path] = entry
        required = PG_REQUIRED if self.store == "postgresql" else REQUIRED
        missing = [name for name in required if name not in found]
        if missing:
            raise BackupError(f"the manifest lacks {', '.join(missing)}")
        return found


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


def _entry(item: dict[str, Any]) -> FileEntry:
    path, size, digest = str(item["path"]), int(item["size"]), str(item["sha256"])
    if not is_member_path(path):
        raise ValueError(f"{path!r} is not a file a backup holds")
    if size < 0 or not _SHA256.fullmatch(digest):
        raise ValueError(f"the entry of {path} has no valid size and SHA-256")
    return FileEntry(path, size, digest)
