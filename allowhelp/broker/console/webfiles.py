"""Which files of web/ the console serves, and so which the wheel carries.

One rule for both: ``static.py`` serves by it, and ``setup.py`` copies by it
(it loads this file by path at build time, before anything is installed, so
this module imports nothing but the standard library). Only page, script,
style, image and font files, nothing hidden, and from ``node_modules`` only
the packages the pages load; plus those packages' licence files, which travel
with their code but are never served.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

SUFFIXES = frozenset(
    {".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".woff", ".woff2", ".ttf"}
)
# The npm packages the session pages load straight from web/node_modules.
PACKAGES = (
    ("node_modules", "@xterm"),
    ("node_modules", "@novnc", "novnc"),
    ("node_modules", "asciinema-player", "dist"),
)
LICENCE_STEMS = ("LICENSE", "LICENCE", "COPYING")


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


def _package_dir(parts: tuple[str, ...]) -> tuple[str, ...]:
    """``node_modules/NAME`` or ``node_modules/@SCOPE/NAME`` of a file inside one."""
    return parts[:3] if parts[1].startswith("@") else parts[:2]


def console_files(web: Path) -> list[str]:
    """Every file under ``web`` the console serves, and the licences of the npm
    packages among them, as sorted paths relative to ``web``."""
    found: set[str] = set()
    npm_dirs: set[tuple[str, ...]] = set()
    for path in web.rglob("*"):
        relative = path.relative_to(web).as_posix()
        if path.is_file() and not path.is_symlink() and servable(relative):
            found.add(relative)
            parts = PurePosixPath(relative).parts
            if parts[0] == "node_modules":
                npm_dirs.add(_package_dir(parts))
    for npm_dir in npm_dirs:
        for licence in web.joinpath(*npm_dir).iterdir():
            if licence.is_file() and licence.name.upper().startswith(LICENCE_STEMS):
                found.add(licence.relative_to(web).as_posix())
    return sorted(found)


def missing_packages(web: Path) -> list[str]:
    """The ``PACKAGES`` that ``web`` lacks (``npm ci`` not run there yet)."""
    return ["/".join(prefix[1:]) for prefix in PACKAGES if not web.joinpath(*prefix).is_dir()]
