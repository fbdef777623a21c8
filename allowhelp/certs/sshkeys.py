"""SSH keys: the agent's host key (its identity) and the broker's tunnel key.

Both sides pin each other's Ed25519 key at enrolment, so every public key that
crosses the network goes through ``parse_public_key``: one strict format, one key
type, no comments or options carried along as hostile text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

import asyncssh

from allowhelp.certs.errors import CertsError, KeyFormatError

__all__ = [
    "agent_id_for",
    "generate_host_key",
    "key_fingerprint",
    "load_private_key",
    "parse_public_key",
    "public_key_line",
    "write_file_atomic",
]

KEY_TYPE = "ssh-ed25519"
_MAX_LINE = 8192  # an Ed25519 line is ~100 chars; refuse floods before decoding
_AGENT_ID_CHARS = 20  # 100 bits of the hash: collisions are out of reach for any fleet


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` so readers see the old file or the new one, never half of it.

    The temporary file is created with O_EXCL and its final mode from the start, so
    a private key is never world-readable, not even for an instant, and a symlink
    planted at the temporary name is not followed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # a strict umask must not leave us unreadable
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable, so a power cut cannot bring back a missing key."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def generate_host_key(path: Path, *, comment: str | None = None) -> str:
    """Make a new identity key; an existing file at ``path`` is replaced.

    Returns the public line without comment, ready to be sent or pinned.
    """
    key = asyncssh.generate_private_key(KEY_TYPE, comment=comment)
    write_file_atomic(path, key.export_private_key("openssh"), 0o600)
    return public_key_line(key)


def load_private_key(path: Path) -> asyncssh.SSHKey:
    """Read a private key, turning every failure into one clear ``CertsError``."""
    try:
        return asyncssh.read_private_key(path)
    except FileNotFoundError:
        raise CertsError(f"SSH private key {path} is missing") from None
    except OSError as exc:
        raise CertsError(f"cannot read SSH private key {path}: {exc.strerror}") from None
    except ValueError as exc:  # asyncssh.KeyImportError, including encrypted keys
        raise CertsError(f"{path} is not a usable SSH private key: {exc}") from None


def parse_public_key(line: str) -> asyncssh.SSHKey:
    """Accept exactly ``ssh-ed25519 <base64> [comment]``, and nothing else.

    Only one key type keeps identities comparable and rules out weak RSA keys or
    certificates slipping in; the comment is dropped as untrusted text.
    """
    if len(line) > _MAX_LINE:
        raise KeyFormatError("SSH public key line is too long")
    fields = line.strip().split()
    if len(fields) < 2:
        raise KeyFormatError(f"not an SSH public key line (expected '{KEY_TYPE} AAAA...')")
    key_type, b64 = fields[0], fields[1]
    if key_type != KEY_TYPE:
        raise KeyFormatError(f"only {KEY_TYPE} keys are accepted, not {key_type[:40]!r}")
    blob = _strict_b64decode(b64)
    try:
        key = asyncssh.import_public_key(f"{key_type} {b64}")
    except ValueError as exc:
        raise KeyFormatError(f"invalid {KEY_TYPE} public key: {exc}") from None
    if key.algorithm != KEY_TYPE.encode("ascii") or key.public_data != blob:
        raise KeyFormatError(f"invalid {KEY_TYPE} public key")
    return key


def _strict_b64decode(text: str) -> bytes:
    """Decode base64, refusing stray characters instead of skipping them."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("SSH public key is not valid base64") from None


def _as_key(key: asyncssh.SSHKey | str) -> asyncssh.SSHKey:
    return parse_public_key(key) if isinstance(key, str) else key


def public_key_line(key: asyncssh.SSHKey | str) -> str:
    """The canonical text of a public key, so equal keys compare equal as strings."""
    ssh_key = _as_key(key)
    blob = base64.b64encode(ssh_key.public_data).decode("ascii")
    return f"{ssh_key.algorithm.decode('ascii')} {blob}"


def key_fingerprint(key: asyncssh.SSHKey | str) -> str:
    """The ``SHA256:...`` form that ``ssh-keygen -l`` prints, for humans to compare."""
    return _as_key(key).get_fingerprint("sha256")


def agent_id_for(key: asyncssh.SSHKey | str) -> str:
    """Derive the agent id from its key, so an agent cannot claim another's id."""
    digest = hashlib.sha256(_as_key(key).public_data).digest()
    encoded = base64.b32encode(digest).decode("ascii").lower()
    return "a-" + encoded[:_AGENT_ID_CHARS]
