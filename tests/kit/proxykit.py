"""Real web proxies for the tunnel tests: tinyproxy (forward, CONNECT, Basic auth)
and nginx (TLS-terminating reverse proxy with WebSocket upgrades), run by the
test on 127.0.0.x in the foreground, each stopped whatever the outcome."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited:\n{log.read_text()}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}:\n{log.read_text()}")


def need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{program} is not installed: run scripts/install test")
    return found


class Tinyproxy:
    """A forward proxy that asks for a password and allows CONNECT to ``allowed`` only."""

    def __init__(self, root: Path, allowed: list[int], user: str, password: str) -> None:
        self.port = free_port()
        self.root = root
        self.conf = root / "tinyproxy.conf"
        self.log = root / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 600",
            "MaxClients 50",
            "LogLevel Connect",
            "User nobody",
            "Group nogroup",
            f"BasicAuth {user} {password}",
            *(f"ConnectPort {port}" for port in allowed),
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [need("tinyproxy"), "-d", "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_listening("127.0.0.1", self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        """Killed: every connection through it is cut at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def tinyproxy(root: Path, allowed: list[int], user: str, password: str) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(root, allowed, user, password).start()
    try:
        yield proxy
    finally:
        proxy.stop()


NGINX_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx.error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/nginx.access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen {listen}:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass https://{upstream};
            proxy_bind {bind};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout {idle}s;
            proxy_send_timeout {idle}s;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
        }}
    }}
}}
"""


class Nginx:
    """nginx on ``listen:port`` in front of the broker's HTTPS at ``upstream``,
    connecting to it from ``bind`` (the address the broker trusts)."""

    def __init__(self, root: Path, *, listen: str, bind: str, idle: int = 60) -> None:
        self.root = root
        self.listen = listen
        self.bind = bind
        self.idle = idle
        self.port = free_port(listen)
        self.log = root / "nginx.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, upstream: str, data: Path) -> Nginx:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / sub).mkdir(exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                root=self.root,
                listen=self.listen,
                port=self.port,
                cert=data / "tls.pem",  # the broker's own: it names localhost
                key=data / "tls.key",
                ca=data / "ca.pem",
                upstream=upstream,
                bind=self.bind,
                idle=self.idle,
            )
        )
        with (self.root / "nginx.stderr").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [need("nginx"), "-c", str(conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_listening(self.listen, self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
