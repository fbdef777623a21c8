"""Each Python the packages carry libraries for really runs them.

Debian 12 has Python 3.11, Ubuntu 22.04 3.10, 24.04 3.12, Debian 13 3.13; the
chroot test covers 3.11. Here the virtual environment each .deb carries for a
Python version is run on that version wherever this machine has it (pyenv or
/usr/bin): the agent enrols with a real broker and comes online, the broker
serves HTTPS. Only the install location is changed for the copy: the
interpreter link, pyvenv.cfg's home and the .pth naming common/.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from debkit import REPO, Debs

from harness import Broker, Fleet, online, wait_for

CASES = [("agent", v) for v in ("3.10", "3.11", "3.12", "3.13")] + [
    ("broker", v) for v in ("3.11", "3.12", "3.13")
]


def interpreter(version: str) -> Path | None:
    """A real interpreter (a venv cannot point at a wrapper such as pyenv's shims)."""
    found = [f"/usr/bin/python{version}"]
    found += sorted(
        glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python{version}"))
    )
    for path in found:
        if Path(path).is_file():
            return Path(path)
    return None


@pytest.fixture(scope="module")
def unpacked(debs: Debs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("unpacked")
    for deb in (debs.broker, debs.agent):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True)
    return where


def environment(unpacked: Path, package: str, version: str, python: Path, into: Path) -> Path:
    """The package's venv for ``version``, moved to ``into`` and pointed at ``python``."""
    home = unpacked / "opt" / "allowhelp" / package
    env = into / f"python{version}"
    shutil.copytree(home / f"python{version}", env, symlinks=True)
    link = env / "bin" / "python3"
    assert link.readlink() == Path(f"/usr/bin/python{version}")
    link.unlink()
    link.symlink_to(python)
    config = env / "pyvenv.cfg"
    config.write_text(config.read_text().replace("home = /usr/bin", f"home = {python.parent}"))
    pth = env / "lib" / f"python{version}" / "site-packages" / "allowhelp-common.pth"
    assert pth.read_text() == f"/opt/allowhelp/{package}/common\n"
    pth.write_text(f"{home / 'common'}\n")
    return env / "bin" / "python3"


@pytest.mark.parametrize(("package", "version"), CASES)
def test_packaged_libraries_run_on(
    package: str, version: str, unpacked: Path, staffed: Fleet, fleet: Fleet, tmp_path: Path
) -> None:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    venv_python = environment(unpacked, package, version, python, tmp_path)
    # run from the repository: its own allowhelp/ must not be what gets imported
    where = subprocess.run(
        [str(venv_python), "-I", "-c", "import allowhelp; print(allowhelp.__file__)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.strip()
    assert where == str(unpacked / "opt/allowhelp" / package / "common/allowhelp/__init__.py")
    if package == "agent":
        run_agent(venv_python, staffed.brokers[0], fleet, tmp_path)
    else:
        run_broker(venv_python, fleet, tmp_path)


def run_agent(python: Path, broker: Broker, fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "agent"
    cli = [str(python), "-I", "-m", "allowhelp.agent.cli"]
    done = subprocess.run(
        [*cli, "enroll", broker.token(), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    agent = fleet.agent("agent")
    with agent.log.open("ab") as log:
        agent.proc = subprocess.Popen(
            [*cli, "run", "--config", str(config), "--prompt", "none"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: online(broker, agent.agent_id), 20, "the packaged agent to come online")
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    assert str(python.parent.parent) in maps, "a library from outside the package was loaded"


def run_broker(python: Path, fleet: Fleet, tmp_path: Path) -> None:
    broker = fleet.broker("packaged")
    with broker.log.open("ab") as log:
        broker.proc = subprocess.Popen(
            [
                *(str(python), "-I", "-m", "allowhelp.broker.cli.main", "serve"),
                *("--data", str(broker.data), "--https", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> dict[str, object] | None:
        assert broker.proc is not None and broker.proc.poll() is None, broker.log.read_text()
        try:
            info: dict[str, object] = json.loads((broker.data / "broker.json").read_text())
        except (OSError, ValueError):
            return None
        return info

    broker.info = wait_for(ready, 30, "the packaged broker to listen")
    with broker.sync_client() as client:
        assert client.get("/api/v1/me").status_code == 401
    # the compiled event loop of this Python's own folder is the one running
    tag = "".join(python.parent.parent.name.removeprefix("python").split("."))
    maps = Path(f"/proc/{broker.proc.pid}/maps").read_text()
    assert f"uvloop/loop.cpython-{tag}-" in maps
