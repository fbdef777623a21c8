"""The members of a backup archive beside its databases (``backup.py``, ``pg_backup.py``):
the anchors, the keys, ``broker.json``, the recordings and last the manifest, each
added to the tar and hashed on the way (the manifest lists every digest)."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

from allowhelp.broker.audit.anchor import ANCHOR_FILE
from allowhelp.broker.node.archive import (
    MANIFEST,
    PKI_FILES,
    RECORDING_NAME,
    FileEntry,
    Manifest,
    member_name,
)
from allowhelp.broker.settings import RECORDINGS, RUNTIME_FILE, RuntimeInfo


def finish_archive(
    tar: tarfile.TarFile,
    manifest: Manifest,
    files: list[FileEntry],
    anchors: bytes | None,
    *,
    data_dir: Path,
    recordings_dir: Path,
) -> Manifest:
    """After the databases: the anchors read before them, the keys, ``broker.json``,
    the recordings, and last the manifest listing them all."""
    if anchors is not None:
        files.append(add_bytes(tar, ANCHOR_FILE, anchors))
    files += [add_path(tar, name, data_dir / name) for name in PKI_FILES]
    runtime = _read_optional(data_dir / RUNTIME_FILE)
    if runtime is not None:
        files.append(add_bytes(tar, RUNTIME_FILE, runtime))
    files += _add_recordings(tar, recordings_dir)
    info = _runtime_info(data_dir) if runtime is not None else None
    manifest = replace(
        manifest,
        tunnel_public=info.tunnel_public if info else None,
        public_url=info.public_url if info else None,
        files=tuple(files),
    )
    raw = manifest.to_bytes()
    tar.addfile(tarinfo(MANIFEST, len(raw)), BytesReader(raw))
    return manifest


def anchor_lines(path: Path) -> bytes | None:
    """The anchor file up to its last whole line (an append may be under way)."""
    raw = _read_optional(path)
    return None if raw is None else raw[: raw.rfind(b"\n") + 1]


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _runtime_info(data_dir: Path) -> RuntimeInfo | None:
    try:
        return RuntimeInfo.read(data_dir)
    except ValueError:  # damaged: the file is still kept, only not read
        return None


def _add_recordings(tar: tarfile.TarFile, folder: Path) -> list[FileEntry]:
    """Every ``ID.cast`` and ``ID.rfb`` in ``folder``, each as long as it is when it is opened."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    added: list[FileEntry] = []
    for name in names:
        if not RECORDING_NAME.fullmatch(name):
            continue
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, OSError):  # removed meanwhile, or a link: not a recording
            continue
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                path = f"{RECORDINGS}/{name}"
                added.append(_add_stream(tar, path, handle, info.st_size, info.st_mtime))
    return added


def add_path(tar: tarfile.TarFile, path: str, source: Path) -> FileEntry:
    with source.open("rb") as handle:
        info = os.fstat(handle.fileno())
        return _add_stream(tar, path, handle, info.st_size, info.st_mtime)


def add_bytes(tar: tarfile.TarFile, path: str, raw: bytes) -> FileEntry:
    return _add_stream(tar, path, BytesReader(raw), len(raw), None)


def _add_stream(
    tar: tarfile.TarFile,
    path: str,
    handle: IO[bytes] | BytesReader,
    size: int,
    mtime: float | None,
) -> FileEntry:
    """Exactly ``size`` bytes of ``handle`` into the tar, hashed on the way."""
    reader = _Hashing(handle)
    tar.addfile(tarinfo(member_name(path), size, mtime), reader)
    return FileEntry(path, size, reader.digest.hexdigest())


def tarinfo(name: str, size: int, mtime: float | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(mtime) if mtime is not None else int(time.time())
    info.uname = info.gname = ""
    return info


class BytesReader:
    def __init__(self, raw: bytes) -> None:
        self._raw = memoryview(raw)
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._raw) if size < 0 else self._at + size
        chunk = bytes(self._raw[self._at : end])
        self._at += len(chunk)
        return chunk


class _Hashing:
    """A reader that hashes what tarfile takes from it (exactly the member's bytes)."""

    def __init__(self, handle: IO[bytes] | BytesReader) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.digest.update(chunk)
        return chunk
