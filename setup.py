"""The console goes inside the wheel: web/'s servable files, npm assets included.

Everything else about the package is in pyproject.toml. This file only adds a
build step: ``build_py`` copies the files the console serves (the rule in
``allowhelp/broker/console/webfiles.py``) into ``allowhelp/broker/console/webroot/``
of the build, so an installed broker needs neither the source tree nor node.
The sdist carries the same files under web/, so a wheel built from it is the
same. Editable installs skip the copy: they serve the checkout's web/.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
WEB = HERE / "web"
WEBROOT = ("allowhelp", "broker", "console", "webroot")


def _webfiles() -> ModuleType:
    """The serving rule, loaded by path: nothing of allowhelp is importable yet."""
    path = HERE.joinpath("allowhelp", "broker", "console", "webfiles.py")
    spec = importlib.util.spec_from_file_location("_allowhelp_webfiles", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def console_files(*, complete: bool) -> list[str]:
    """web/'s files to ship; ``complete`` refuses a web/ without its npm packages."""
    rules = _webfiles()
    missing: list[str] = rules.missing_packages(WEB)
    if complete and (missing or not (WEB / "index.html").is_file()):
        raise SystemExit(
            f"error: the console is incomplete: {', '.join(missing) or 'index.html'} missing "
            f"in {WEB}; run `npm ci` there first (scripts/package does)"
        )
    files: list[str] = rules.console_files(WEB) if WEB.is_dir() else []
    return files


class BuildWithConsole(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self._copy_console()

    def _copy_console(self) -> None:
        target = Path(self.build_lib).joinpath(*WEBROOT)
        if target.exists():
            shutil.rmtree(target)  # no file left over from an earlier build
        for name in console_files(complete=True):
            self.copy_file(str(WEB / name), str(_make_parent(target / name)), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        target = Path(self.build_lib).joinpath(*WEBROOT)
        shipped = [] if self.editable_mode else console_files(complete=False)
        return [*super().get_outputs(include_bytecode), *(str(target / n) for n in shipped)]

    def get_source_files(self) -> list[str]:
        """What the sdist takes: the modules, and web/'s files the wheel is made of."""
        web = [f"web/{name}" for name in console_files(complete=False)]
        return [*super().get_source_files(), *web]


class SdistWithConsole(sdist):
    def run(self) -> None:
        console_files(complete=True)  # no sdist whose wheel would lack the console
        super().run()


def _make_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


setup(cmdclass={"build_py": BuildWithConsole, "sdist": SdistWithConsole})
