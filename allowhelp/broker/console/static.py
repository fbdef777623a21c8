"""The console's static files: web/ as a whitelist, not as a directory listing.

Starlette's StaticFiles already keeps ``..`` and symlinks from leaving web/;
on top of that only page, script, style, image and font files are served,
nothing hidden (``.git``, ``.env``), no ``package.json``, and from
``node_modules`` only the packages the pages load.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

SUFFIXES = frozenset(
    {".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".woff", ".woff2", ".ttf"}
)
# The npm packages the session pages load straight from web/node_modules.
PACKAGES = (
    ("node_modules", "@xterm"),
    ("node_modules", "@novnc", "novnc"),
    ("node_modules", "asciinema-player", "dist"),
)


def servable(path: str) -> bool:
    """``path`` is relative to web/, after StaticFiles normalised it."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    if PurePosixPath(parts[-1]).suffix.lower() not in SUFFIXES:
        return False
    if "node_modules" in parts:
        return any(parts[: len(prefix)] == prefix for prefix in PACKAGES)
    return True


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        if not servable(path):
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)
