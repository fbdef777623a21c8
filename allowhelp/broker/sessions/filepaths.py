"""What a path in a files request may be: checked before anything reaches the PC.

A path is data: it goes to the PC's sftp-server as one SFTP string, never to
a shell. Still, the broker refuses what no technician needs and what could
mislead a reader of the audit log or the PC user's window: ``..`` components
(a path says where it goes, not where it climbs), ``.`` and empty components
(``/./`` and ``//`` only pad a path: a reader shown part of it would not see
what it names), NUL, line breaks and other control characters, format
characters (such as U+202E, which shows text backwards; not the joiners that
spell words in some scripts), text that is not
UTF-8, names longer than a file system takes (255 bytes) and very long paths.
Relative paths are relative to the PC user's home folder; ``.`` alone is that
folder, ``/`` alone the root, and one ``/`` may end a folder's path.
"""

from __future__ import annotations

import posixpath
import unicodedata
from urllib.parse import unquote_to_bytes

from allowhelp.broker.errors import BadRequest

MAX_PATH = 4096
# Format characters a name may hold: the zero-width non-joiner and joiner spell words
# in Persian and the Indic scripts, and emoji sequences; the rest (U+202E's reversed
# text, U+200B's invisible space, ...) only hide what a path names.
JOINERS = frozenset("\u200c\u200d")
MAX_NAME = 255  # bytes in one component (NAME_MAX on Linux)
TEMP_NAME = 200  # bytes of the file's name kept in its upload's temporary name


def path_from_query(query_string: bytes, *, default: str | None = None) -> str:
    """The ``path`` parameter of a raw query string, checked (``BadRequest`` if bad).

    Read from the raw bytes: percent-escapes that are not UTF-8 are refused
    here instead of being replaced by U+FFFD on the way in."""
    found: bytes | None = None
    for pair in query_string.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == b"path":
            found = unquote_to_bytes(value.replace(b"+", b" "))
    if found is None:
        if default is None:
            raise BadRequest("the path parameter is missing", code="bad_path")
        return default
    try:
        text = found.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not UTF-8 text", code="bad_path") from None
    return checked_path(text)


def checked_path(text: str) -> str:
    if not text:
        raise BadRequest("the path is empty", code="bad_path")
    if len(text.encode()) > MAX_PATH:
        raise BadRequest(f"the path is longer than {MAX_PATH} bytes", code="bad_path")
    if "\x00" in text:
        raise BadRequest("the path contains a NUL character", code="bad_path")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text):
        raise BadRequest("the path contains a line break or control character", code="bad_path")
    if any(unicodedata.category(ch) == "Cf" and ch not in JOINERS for ch in text):
        raise BadRequest(
            "the path contains an invisible format character (such as U+202E)", code="bad_path"
        )
    _check_components(text)
    return text


def _check_components(text: str) -> None:
    """No ``..``, ``.`` or empty component, none longer than ``MAX_NAME`` bytes;
    ``.`` and ``/`` alone, a leading ``/`` and one trailing ``/`` are fine."""
    if text in (".", "/"):
        return
    parts = text.removeprefix("/").removesuffix("/").split("/")
    if ".." in parts:
        raise BadRequest('the path contains a ".." component', code="bad_path")
    if "." in parts:
        raise BadRequest('the path contains a "." component', code="bad_path")
    if "" in parts:
        raise BadRequest('the path contains an empty component ("//")', code="bad_path")
    if any(len(part.encode()) > MAX_NAME for part in parts):
        raise BadRequest(f"a name in the path is longer than {MAX_NAME} bytes", code="bad_path")


def upload_names(path: str, token: str) -> tuple[str, str]:
    """(folder, temporary name) for an upload to ``path``: the same folder, so the
    final rename stays on one file system; a dot name nobody mistakes for the file."""
    folder, name = posixpath.split(path.rstrip("/") or path)
    if not name or name in (".", ".."):
        raise BadRequest("the path names a folder, not a file", code="is_a_folder")
    kept = name.encode()[:TEMP_NAME].decode("utf-8", "ignore")  # whole characters, bytes
    temp = f".{kept}.allowhelp-{token}.part"  # at most 229 bytes
    return folder, posixpath.join(folder, temp) if folder else temp
