"""A throwaway OpenSSH server on 127.0.0.1 for the baselines, and its client command lines.

sshd runs with its own config, host key and authorized_keys in a temp folder,
on a free port, and is stopped with the rest. Nothing of the system's
``/etc/ssh`` is read (``-f`` config, ``-F /dev/null`` for the client).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Procs, free_port, log, wait_for

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "apt-get install -y openssh-server openssh-client"


def missing() -> str | None:
    """Why the OpenSSH baselines cannot run, or None."""
    if not Path(SSHD).exists():
        return f"{SSHD} not found: {INSTALL_HINT}"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found: {INSTALL_HINT}"
    return None


@dataclass
class Sshd:
    procs: Procs
    folder: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> Path:
        return self.folder / "client_key"

    def start(self) -> Sshd:
        self.folder.mkdir(parents=True, exist_ok=True)
        host_key = self.folder / "host_ed25519"
        for path in (host_key, self.key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                check=True,
                capture_output=True,
            )
        (self.folder / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        self.port = free_port()
        config = self.folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
                    "UsePAM no",
                    "PermitRootLogin yes",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "AllowTcpForwarding yes",
                    "PermitTTY yes",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "UseDNS no",
                    "LogLevel ERROR",
                    "MaxStartups 100:30:200",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        argv = [SSHD, "-D", "-e", "-f", str(config), "-p", str(self.port), "-h", str(host_key)]
        self.proc = self.procs.start(argv, log_path=self.folder / "sshd.log")
        wait_for(lambda: self.run("true").returncode == 0, 20, "sshd to accept logins", step=0.2)
        return self

    def ssh_argv(self, *extra: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            *extra,
            "root@127.0.0.1",
        ]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_argv(), command], capture_output=True, text=True, timeout=30, check=False
        )

    def negotiated_cipher(self, *extra: str) -> str:
        """What the client and this sshd agree on (from ``ssh -v``)."""
        argv = [*self.ssh_argv(*extra), "true"]
        argv[argv.index("LogLevel=ERROR")] = "LogLevel=DEBUG1"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        match = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", done.stderr)
        if not match:
            return "?"
        mac = match.group(2)
        return match.group(1) + ("" if mac == "<implicit>" else f" + {mac}")

    def forward(self, local_port: int, target_port: int, *extra: str) -> subprocess.Popen[bytes]:
        """``ssh -N -L`` from 127.0.0.1:local_port to 127.0.0.1:target_port on the far side."""
        argv = self.ssh_argv(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local_port}:127.0.0.1:{target_port}",
            *extra,
        )
        proc = self.procs.start(argv)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("ssh -L exited early")
            try:
                with socket.create_connection(("127.0.0.1", local_port), timeout=1):
                    pass
                return proc
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("ssh -L did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)


def start_if_present(procs: Procs, folder: Path) -> tuple[Sshd | None, str | None]:
    """A started throwaway sshd, or None and why the OpenSSH baselines are skipped."""
    why = missing()
    if why is not None:
        log(f"OpenSSH baselines skipped: {why}")
        return None, why
    return Sshd(procs, folder).start(), None
