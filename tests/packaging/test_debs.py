"""The .debs, installed for real into a throwaway Debian 12 root.

One root for the module; the tests run in order, as an administrator would:
install the broker, serve HTTPS and make a token, install the agent with a token
file, upgrade both to a later build, remove, purge. Root only (chroot, mount).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from debkit import ENV, REPO, Chroot, Debs, debian_root

from harness import Broker, wait_for

pytestmark = [
    pytest.mark.debs,
    pytest.mark.skipif(os.geteuid() != 0, reason="installing .debs into a chroot needs root"),
]

DATA = "/var/lib/allowhelp/broker"
ADMIN, ADMIN_PW = "ada", "a long admin password"
TOKEN_FILE = "/etc/allowhelp/enroll-token"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    with debian_root(tmp_path_factory.mktemp("debroot")) as chroot:
        yield chroot


def apt_install(root: Chroot, *debs: Path) -> str:
    inside = []
    for deb in debs:
        (root.file("/tmp") / deb.name).write_bytes(deb.read_bytes())
        inside.append(f"/tmp/{deb.name}")
    done = root.run("apt-get", "install", "-y", "--no-install-recommends", *inside)
    return done.stdout + done.stderr


def status(root: Chroot, package: str) -> str:
    done = root.run("dpkg-query", "-W", "-f=${Status} ${Version}", package, check=False)
    return done.stdout.strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_broker(root: Chroot) -> Broker:
    """``allowhelp-broker serve`` as the allowhelp user, inside the root, on port 0."""
    data = root.file(DATA)
    (data / "broker.json").unlink(missing_ok=True)
    broker = Broker(data)
    log = root.path.parent / "serve.log"  # outside the root: purge must find it as it left it
    with log.open("ab") as out:
        broker.proc = subprocess.Popen(
            root.command(
                *("setpriv", "--reuid=allowhelp", "--regid=allowhelp", "--init-groups"),
                *("allowhelp-broker", "serve", "--data", DATA),
                *("--https", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**ENV, "HOME": DATA},  # as systemd sets it for User=allowhelp
        )

    def ready() -> dict[str, object] | None:
        assert broker.proc is not None
        assert broker.proc.poll() is None, log.read_text()
        try:
            info: dict[str, object] = json.loads((data / "broker.json").read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == broker.proc.pid else None

    broker.info = wait_for(ready, 30, "the packaged broker to listen")
    return broker


def stop_broker(broker: Broker) -> None:
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(20) == 0


def as_allowhelp(root: Chroot, *argv: str, stdin: str | None = None) -> str:
    """An administration command the way docs/install.md and the postinst say to run it."""
    done = root.run("runuser", "-u", "allowhelp", "--", *argv, stdin=stdin)
    return done.stdout


def test_packages_say_what_they_need(debs: Debs) -> None:
    def field(deb: Path, name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert field(debs.agent, "Depends") == (
        "python3 (>= 3.10~), python3 (<< 3.14~), x11vnc, zenity | kdialog"
    )
    assert field(debs.agent, "Recommends") == "wayvnc, x11-xserver-utils, xdg-desktop-portal"
    assert field(debs.broker, "Depends") == "python3 (>= 3.11~), python3 (<< 3.14~), passwd"
    assert "x11vnc" not in field(debs.broker, "Depends")


def test_agent_package_carries_no_web_stack(debs: Debs) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(debs.agent)], capture_output=True, text=True, check=True
    ).stdout
    for absent in (
        "/starlette/",
        "/uvicorn/",
        "/argon2/",
        "/prometheus_client/",
        "allowhelp/broker/",
    ):
        assert absent not in listing, absent
    # websockets (pure Python) carries the tunnel on the HTTPS port (allowhelp/agent/wstunnel.py)
    for present in (
        "/asyncssh/",
        "/cryptography/",
        "/websockets/",
        "allowhelp/agent/",
        "allowhelp/certs/",
    ):
        assert present in listing, present


def test_broker_installs_and_runs_its_commands(root: Chroot, debs: Debs) -> None:
    printed = apt_install(root, debs.broker)
    assert status(root, "allowhelp-broker") == f"install ok installed {debs.version}"
    assert "runuser -u allowhelp -- allowhelp-broker user add" in printed
    assert "usage: allowhelp-broker" in root.run("allowhelp-broker", "--help").stdout
    user = root.run("getent", "passwd", "allowhelp").stdout
    assert user.split(":")[5:] == [DATA, "/usr/sbin/nologin\n"]
    data = root.file(DATA).stat()
    assert (data.st_mode & 0o777, data.st_uid) == (0o700, int(user.split(":")[2]))
    # enabled as systemd would have it, though no systemd runs in the root
    wants = root.file("/etc/systemd/system/multi-user.target.wants/allowhelp-broker.service")
    assert wants.is_symlink()
    shipped = root.file("/usr/lib/systemd/system/allowhelp-broker.service").read_text()
    assert shipped == (REPO / "packaging/systemd/allowhelp-broker.service").read_text()
    # byte code made for the root's Python (3.11), so the unprivileged service starts fast
    assert list(
        root.file("/opt/allowhelp/broker/common/allowhelp").glob("__pycache__/*.cpython-311.pyc")
    )


def test_broker_serves_https_and_keeps_its_users(root: Chroot) -> None:
    broker = start_broker(root)
    try:
        with broker.sync_client() as client:
            answer = client.get("/api/v1/me")
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthenticated"
        as_allowhelp(
            root,
            *("allowhelp-broker", "user", "add", ADMIN, "--role", "admin"),
            *("--password-stdin", "--data", DATA),
            stdin=ADMIN_PW + "\n",
        )
        with broker.sync_client() as client:
            login = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert login.status_code == 200, login.text
    finally:
        stop_broker(broker)
    owners = {path.stat().st_uid for path in root.file(DATA).iterdir()}
    assert owners == {root.file(DATA).stat().st_uid}, "a file of the data folder is not allowhelp's"


def test_agent_installs_and_enrols_from_the_token_file(root: Chroot, debs: Debs) -> None:
    broker = start_broker(root)
    try:
        token = as_allowhelp(root, "allowhelp-broker", "token", "create", "--data", DATA).strip()
        token_file = root.file(TOKEN_FILE)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        printed = apt_install(root, debs.agent)
    finally:
        stop_broker(broker)
    assert status(root, "allowhelp-agent") == f"install ok installed {debs.version}"
    assert "usage: allowhelp-agent" in root.run("allowhelp-agent", "--help").stdout
    for unit in ("allowhelp-agent.service", "allowhelp-agent-enroll.service"):
        assert root.file(f"/etc/systemd/system/multi-user.target.wants/{unit}").is_symlink()
    session = "/usr/lib/systemd/user/graphical-session.target.wants/allowhelp-agent-session.service"
    session_unit = root.file("/usr/lib/systemd/user/allowhelp-agent-session.service")
    assert root.file(session).resolve() == session_unit
    assert root.file("/etc/xdg/autostart/allowhelp-agent-session.desktop").is_file()
    assert root.file("/etc/allowhelp/agent").stat().st_mode & 0o777 == 0o700
    assert "--system" in root.run("allowhelp-agent", "enroll", "--help").stdout
    assert "enrolled; removed the token file" in printed, printed
    assert root.file("/etc/allowhelp/agent/agent.json").is_file()
    assert root.file("/etc/allowhelp/agent/agent.json").stat().st_mode & 0o777 == 0o600
    assert not token_file.exists()


def test_launcher_refuses_a_python_it_has_no_libraries_for(root: Chroot) -> None:
    """As after a dist-upgrade to a Python newer than the package: one line, exit 1."""
    env = root.file("/opt/allowhelp/agent/python3.11")
    env.rename(env.with_name("python3.11.away"))
    try:
        done = root.run("allowhelp-agent", "--help", check=False)
    finally:
        env.with_name("python3.11.away").rename(env)
    assert done.returncode == 1
    assert done.stderr == (
        "allowhelp-agent: error: this package carries libraries for Python 3.10 3.11 3.12 3.13,"
        " not for python3.11 (/usr/bin/python3): install the allowhelp-agent package built"
        " for this release\n"
    )
    assert root.run("allowhelp-agent", "--help").returncode == 0


def test_upgrade_keeps_data_and_configuration(root: Chroot, next_debs: Debs) -> None:
    ca = sha256(root.file(f"{DATA}/ca.pem"))
    default = root.file("/etc/default/allowhelp-broker")
    edited = (
        default.read_text()
        + 'ALLOWHELP_BROKER_OPTS="$ALLOWHELP_BROKER_OPTS --consent-timeout 90"\n'
    )
    default.write_text(edited)
    identity = root.file("/etc/allowhelp/agent/marker")
    identity.write_text("kept")  # stands for the PC's key until enroll --system exists

    apt_install(root, next_debs.broker, next_debs.agent)

    for package in ("allowhelp-broker", "allowhelp-agent"):
        assert status(root, package) == f"install ok installed {next_debs.version}"
    assert sha256(root.file(f"{DATA}/ca.pem")) == ca
    assert default.read_text() == edited
    assert identity.read_text() == "kept"
    broker = start_broker(root)
    try:
        with broker.sync_client() as client:
            login = client.post("/api/v1/login", json={"username": ADMIN, "password": ADMIN_PW})
        assert login.status_code == 200, "the admin made before the upgrade cannot log in"
    finally:
        stop_broker(broker)


def test_remove_keeps_configuration_and_data(root: Chroot) -> None:
    done = root.run("dpkg", "-r", "allowhelp-broker", "allowhelp-agent")
    assert f"kept {DATA}" in done.stdout
    for package in ("allowhelp-broker", "allowhelp-agent"):
        assert status(root, package).startswith("deinstall ok config-files")
    for gone in ("/usr/bin/allowhelp-broker", "/usr/bin/allowhelp-agent", "/opt/allowhelp/broker"):
        assert not root.file(gone).exists(), gone
    assert not root.file("/opt/allowhelp/agent").exists(), "byte code left behind"
    for kept in (f"{DATA}/ca.pem", f"{DATA}/broker.sqlite3", "/etc/default/allowhelp-broker"):
        assert root.file(kept).exists(), kept
    assert root.file("/etc/allowhelp/agent/marker").exists()


def test_purge_removes_the_rest(root: Chroot) -> None:
    done = root.run("dpkg", "-P", "allowhelp-broker", "allowhelp-agent")
    assert f"purged: deleted {DATA}" in done.stdout
    for gone in (
        "/var/lib/allowhelp",
        "/etc/allowhelp",
        "/etc/default/allowhelp-broker",
        "/etc/xdg/autostart/allowhelp-agent-session.desktop",
        "/opt/allowhelp",
        "/etc/systemd/system/multi-user.target.wants/allowhelp-broker.service",
        "/etc/systemd/system/multi-user.target.wants/allowhelp-agent.service",
    ):
        assert not root.file(gone).exists() and not root.file(gone).is_symlink(), gone
    assert status(root, "allowhelp-broker") == ""
