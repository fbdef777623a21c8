"""The wheel carries the whole console: installed outside the checkout, it serves
every page and every file each page loads, and no npm file it does not need.

Real parts throughout: ``python -m build`` (the sdist, then the wheel from that
sdist, as ``scripts/package`` does), a fresh virtual environment outside the
checkout with the wheel installed by pip, and that environment's own
``allowhelp-broker`` serving on 127.0.0.1 port 0 from a folder outside the
checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from allowhelp import __version__
from allowhelp.broker.console.webfiles import PACKAGES, console_files, servable
from harness import ADMIN, ADMIN_PW, Broker

REPO = Path(__file__).resolve().parents[2]
WEBROOT = "allowhelp/broker/console/webroot/"
PAGES = ("/index.html", "/terminal.html", "/screen.html", "/replay.html")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per test session: sdist, then the wheel from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    found = out / f"allowhelp-{__version__}-py3-none-any.whl"
    assert found.is_file(), sorted(p.name for p in out.iterdir())
    assert (out / f"allowhelp-{__version__}.tar.gz").is_file()
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel (and its broker extra) in it."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.is_relative_to(REPO)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{wheel}[broker]",
        ],
        cwd=venv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


@pytest.fixture(scope="module")
def served(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The installed ``allowhelp-broker serve``, run from a folder outside the checkout."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    program = installed / "bin" / "allowhelp-broker"
    broker = Broker(elsewhere / "data", program=[str(program)], cwd=elsewhere)
    try:
        broker.start()
        data = ["--data", str(broker.data)]
        added = subprocess.run(
            [str(program), "user", "add", ADMIN, "--role", "admin", "--password-stdin", *data],
            input=ADMIN_PW + "\n",
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        yield broker
    finally:
        broker.kill()


def test_the_installed_broker_serves_its_own_copy_of_the_console(installed: Path) -> None:
    done = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "from allowhelp.broker.console.app import find_web_dir; print(find_web_dir())",
        ],
        cwd=installed,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    web = Path(done.stdout.strip())
    assert web.is_relative_to(installed) and web.name == "webroot", web


class References(HTMLParser):
    """The files a page loads: scripts (and which are modules), styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.modules: list[str] = []
        self.others: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            target = self.modules if values.get("type") == "module" else self.others
            target.append(str(values["src"]))
        elif tag == "link" and values.get("href"):
            self.others.append(str(values["href"]))
        elif tag == "img" and values.get("src"):
            self.others.append(str(values["src"]))


# Static module imports and re-exports: `import x from "..."`, `import "..."`,
# `export ... from "..."`, across lines; never inside a word (importScripts).
IMPORT = re.compile(
    r"""^\s*(?:import|export)\b(?:[^;"'`]*?\bfrom)?\s*["']([^"']+)["']""", re.MULTILINE
)
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)|@import\s+["']([^"']+)["']""")


def local(base: str, reference: str) -> str | None:
    """The path on this broker ``reference`` names, or None for data:/other hosts."""
    if reference.startswith(("data:", "#")):
        return None
    url = urljoin(base, reference)
    parts = urlsplit(url)
    return parts.path if parts.netloc in ("", urlsplit(base).netloc) else None


def crawl(client: httpx.Client, pages: tuple[str, ...]) -> dict[str, int]:
    """Fetch every page and, recursively, every file it loads; each must be there."""
    seen: dict[str, int] = {}
    todo: list[tuple[str, str]] = [(page, "page") for page in pages]
    while todo:
        path, kind = todo.pop()
        if path in seen:
            continue
        answer = client.get(path)
        assert answer.status_code == 200, f"{path}: {answer.status_code}"
        assert answer.content, f"{path} is empty"
        seen[path] = len(answer.content)
        base = str(client.base_url.join(path))
        found: list[tuple[str, str]] = []
        if kind == "page":
            refs = References()
            refs.feed(answer.text)
            found += [(ref, "module") for ref in refs.modules]
            found += [(ref, "file") for ref in refs.others]
        elif kind == "module":
            kind_type = answer.headers["content-type"]
            assert "javascript" in kind_type, f"{path} is served as {kind_type}"
            found += [(m.group(1), "module") for m in IMPORT.finditer(answer.text)]
        if path.endswith(".css"):
            found += [(a or b, "file") for a, b in CSS_URL.findall(answer.text)]
        for reference, what in found:
            target = local(base, reference)
            if target is not None:
                todo.append((target, "module" if what == "module" else "file"))
    return seen


def test_every_page_and_everything_it_loads_is_served(served: Broker) -> None:
    with served.sync_client() as client:
        login = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert login.status_code == 200, login.text
        assert client.get("/api/v1/me").json()["role"] == "admin"
        seen = crawl(client, PAGES)
        assert client.get("/").text == client.get("/index.html").text
    # What the crawl must have reached: each npm package, and noVNC's module graph.
    for prefix in PACKAGES:
        assert any(PurePosixPath(p).parts[1:][: len(prefix)] == prefix for p in seen), prefix
    assert "/node_modules/@novnc/novnc/core/websock.js" in seen
    assert "/node_modules/@xterm/addon-fit/lib/addon-fit.mjs" in seen
    assert "/js/lib/session-states.js" in seen


def test_the_installed_broker_still_refuses_what_is_not_servable(served: Broker) -> None:
    with served.sync_client() as client:
        for path in (
            "/node_modules/@xterm/xterm/package.json",
            "/node_modules/@xterm/xterm/LICENSE",
            "/package.json",
            "/node_modules/typescript/lib/tsc.js",
        ):
            assert client.get(path).status_code == 404, path


def test_the_wheel_holds_the_console_and_no_other_npm_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
    shipped = sorted(n.removeprefix(WEBROOT) for n in names if n.startswith(WEBROOT))
    # Exactly the checkout's servable files and their packages' licences.
    assert shipped == console_files(REPO / "web")
    npm = [n for n in shipped if n.startswith("node_modules/")]
    assert npm, "no npm asset in the wheel"
    for name in npm:
        path = PurePosixPath(name)
        assert path.name != "package.json" and path.suffix not in (".ts", ".map"), name
        assert not {"test", "tests", "__tests__", "src"} & set(path.parts), name
        assert any(path.parts[: len(prefix)] == prefix for prefix in PACKAGES) or (
            path.name.upper().startswith("LICENSE")
        ), name
        assert servable(name) or path.name.upper().startswith("LICENSE"), name
    assert not [n for n in names if n.startswith(("web/", "tests/", "node_modules/"))]


def test_a_broker_without_its_console_files_says_so_in_one_line(tmp_path: Path) -> None:
    """Neither a packaged copy nor a checkout's web/: a one-line error at start, not 500s."""
    code = (
        "import sys; from pathlib import Path; import allowhelp.broker.console.app as app; "
        f"app.PACKAGED_WEB = app.SOURCE_WEB = Path({str(tmp_path / 'none')!r}); "
        "from allowhelp.broker.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    listen = ["--https", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, "-c", code, "serve", "--data", str(tmp_path / "data"), *listen],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"allowhelp-broker: error: the console's files are missing: neither {tmp_path / 'none'} "
        f"nor {tmp_path / 'none'} has index.html; install the wheel that scripts/package builds"
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_the_installed_agent_speaks_french_from_its_own_catalogs(
    wheel: Path, installed: Path, tmp_path: Path
) -> None:
    """The compiled catalogs travel in the wheel, and the installed agent finds them."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for language in ("fr", "nl", "de"):
        assert f"allowhelp/agent/locale/{language}/LC_MESSAGES/allowhelp.mo" in names
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    done = subprocess.run(
        [str(installed / "bin" / "allowhelp-agent"), "pending", "--config", str(tmp_path / "x")],
        cwd=tmp_path,
        env={**env, "LANG": "fr_BE.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "l'agent ne tourne pas" in done.stderr, done.stderr
