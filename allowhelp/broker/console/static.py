"""The console's static files: web/ as a whitelist, not as a directory listing.

Starlette's StaticFiles already keeps ``..`` and symlinks from leaving web/;
on top of that only what ``webfiles.servable`` allows is served: page, script,
style, image and font files, nothing hidden (``.git``, ``.env``), no
``package.json``, and from ``node_modules`` only the packages the pages load.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from allowhelp.broker.console.webfiles import PACKAGES, SUFFIXES, servable

__all__ = ["PACKAGES", "SUFFIXES", "ConsoleFiles", "servable"]


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        if not servable(path):
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)
