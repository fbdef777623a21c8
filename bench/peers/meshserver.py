"""MeshCentral on 127.0.0.1: install from npm into a cache folder, configure, run, add agents.

The package is installed once with npm's own client into
``~/.cache/allowhelp-bench/meshcentral`` (whatever registry npm is configured
with; nothing else is fetched). Each run gets a fresh data folder: accounts are
created while the server is stopped (``--createaccount``, ``--adminaccount``),
then the server runs in this process's care (``--launch``: no restart wrapper,
one Node process, so its RSS is the server's) with the V8 inspector on a free
loopback port, through which the bench forces a full garbage collection
(``HeapProfiler.collectGarbage``) before it reads memory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from bench.common import Procs, free_port, log, wait_for

VERSION = "1.1.55"
CACHE = Path.home() / ".cache" / "allowhelp-bench" / "meshcentral"
ADMIN, ADMIN_PW = "benchadmin", "Bench-admin-password-123!"
GROUP = "benchgroup"


def package_dir() -> Path:
    return CACHE / "node_modules" / "meshcentral"


def install() -> Path:
    """npm install meshcentral@VERSION into the cache folder, unless it is there already."""
    pkg = package_dir()
    with contextlib.suppress(OSError, ValueError):
        if json.loads((pkg / "package.json").read_text())["version"] == VERSION:
            return pkg
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError(
            "node and npm are needed to install MeshCentral (apt-get install nodejs npm)"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"installing meshcentral@{VERSION} with npm into {CACHE}")
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", f"meshcentral@{VERSION}"],
        cwd=CACHE,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"npm install meshcentral@{VERSION} failed: {done.stderr.strip()[-400:]}"
        )
    return pkg


def pids_running_from(folder: Path) -> list[int]:
    """Processes whose executable lies under ``folder`` (this run's meshagent copies)."""
    prefix = str(folder.resolve()) + os.sep
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe").startswith(prefix):
                    found.append(int(entry.name))
    return found


def insecure_context() -> ssl.SSLContext:
    """MeshCentral's certificate is self-signed on first start; the bench is on loopback."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class MeshServer:
    procs: Procs
    data: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    inspector: str = ""
    group_id: str = ""
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ping_storm: bool = False  # the earlier "agentPing": 0 (bench.browserkeys --mesh-ping-storm)
    # Its session recording for the terminal (protocol 1), off by default: each relayed
    # message, both ways, is written to the recording before it is passed on
    # (meshrelay.js ``recordingEntry``), as ours records output before showing it.
    recording: bool = False

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("MeshCentral is not running")
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def recordings(self) -> Path:
        return self.data / "recordings"

    def recorded_bytes(self) -> int:
        """The size of the session recordings so far (0 without any)."""
        if not self.recordings.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.recordings.iterdir() if path.is_file())

    def _node(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            ["node", str(package_dir() / "meshcentral.js"), "--datapath", str(self.data), *args],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"meshcentral {args[0]} failed: {(done.stdout + done.stderr)[-400:]}"
            )
        return done.stdout

    def configure(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        settings = {
            "cert": "127.0.0.1",
            "port": self.port,
            "portBind": "127.0.0.1",
            "aliasPort": self.port,
            "redirPort": 0,
            "mpsPort": 0,
            "selfUpdate": False,
            "agentTimeStampServer": False,
            "WANonly": True,
            "noAgentUpdate": 1,
            # no "agentPing": MeshCentral reads 0 as a ping every 0 s, and Node runs
            # setInterval(ping, 0) every millisecond: every agent and relay socket pinged
            # 1,000 times a second. Its default (none given) sends no pings.
        }
        if self.ping_storm:
            settings["agentPing"] = 0
        domain: dict[str, Any] = {"title": "bench"}
        if self.recording:
            domain["sessionRecording"] = {"filepath": str(self.recordings), "protocols": [1]}
        config = {"settings": settings, "domains": {"": domain}}
        (self.data / "config.json").write_text(json.dumps(config, indent=1))
        self._node("--createaccount", ADMIN, "--pass", ADMIN_PW, "--email", "bench@127.0.0.1")
        self._node("--adminaccount", ADMIN)

    def start(self, timeout: float = 180) -> MeshServer:
        """One Node process (``--launch``: it exits when its stdin closes), inspector on."""
        inspect = free_port()
        self.inspector = f"127.0.0.1:{inspect}"
        self.proc = proc = self.procs.start(
            [
                *("node", f"--inspect=127.0.0.1:{inspect}", str(package_dir() / "meshcentral.js")),
                *("--datapath", str(self.data), "--launch", str(os.getpid())),
            ],
            log_path=self.data.parent / "meshcentral.log",
            cwd=CACHE,
            stdin=subprocess.PIPE,
        )

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"MeshCentral exited with {proc.returncode}; see meshcentral.log"
                )
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "/", context=insecure_context(), timeout=2)
                return True
            return False

        wait_for(ready, timeout, "MeshCentral to serve HTTPS", step=0.5)
        return self

    def control(self) -> Any:
        """A logged-in ``control.ashx`` WebSocket, as meshctrl.js opens it."""
        auth = ",".join(base64.b64encode(s.encode()).decode() for s in (ADMIN, ADMIN_PW))
        return connect(
            self.url.replace("https://", "wss://") + "/control.ashx",
            ssl=insecure_context(),
            additional_headers={"x-meshauth": auth},
            max_size=None,
            compression=None,
            open_timeout=30,  # a loaded machine: the TLS handshake has taken over 10 s
        )

    def add_group(self) -> str:
        meshctrl = [
            *("node", str(package_dir() / "meshctrl.js")),
            *("--url", self.url.replace("https://", "wss://"), "--loginuser", ADMIN),
            *("--loginpass", ADMIN_PW),
        ]
        env = {**os.environ, "NODE_TLS_REJECT_UNAUTHORIZED": "0"}
        done = subprocess.run(
            [*meshctrl, "adddevicegroup", "--name", GROUP],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        match = re.search(r"mesh/[^/\s]*/[\w$@]+", done.stdout)
        if done.returncode != 0 or "ok" not in done.stdout.lower():
            raise RuntimeError(
                f"meshctrl adddevicegroup failed: {(done.stdout + done.stderr)[-300:]}"
            )
        if match is None:
            listed = subprocess.run(
                [*meshctrl, "listdevicegroups", "--json"],
                cwd=CACHE,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )
            groups = json.loads(listed.stdout)
            self.group_id = next(g["_id"] for g in groups if g["name"] == GROUP)
        else:
            self.group_id = match.group(0)
        return self.group_id

    def msh(self) -> bytes:
        short = self.group_id.split("/")[-1]
        url = f"{self.url}/meshsettings?id={short}"
        with urllib.request.urlopen(url, context=insecure_context(), timeout=30) as answer:
            body: bytes = answer.read()
        if b"MeshID" not in body:
            raise RuntimeError(f"/meshsettings gave no agent settings: {body[:200]!r}")
        return body

    def start_agent(
        self, folder: Path, msh: bytes, display: str | None = None, link_from: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """``meshagent connect`` in a folder of its own (it keeps its .msh and .db next to
        its binary). ``link_from``: one copy of the binary, hard-linked into each folder."""
        folder.mkdir(parents=True, exist_ok=True)
        binary = folder / "meshagent"
        source = package_dir() / "agents" / "meshagent_x86-64"
        if link_from is not None:
            if not link_from.exists():
                shutil.copy2(source, link_from)
                link_from.chmod(0o755)
            if not binary.exists():
                os.link(link_from, binary)
        elif not binary.exists():
            shutil.copy2(source, binary)
            binary.chmod(0o755)
        (folder / "meshagent.msh").write_bytes(msh)
        env = {"DISPLAY": display} if display else None
        proc = self.procs.start(
            [str(binary), "connect"],
            log_path=folder / "agent.log",
            cwd=folder,
            env=env,
            hide=() if display else ("DISPLAY",),
        )
        self.agents.append(proc)
        return proc

    def online_nodes(self) -> list[str]:
        """Node ids of the group's agents connected now."""
        with self.control() as ws:
            ws.send(json.dumps({"action": "nodes", "responseid": "bench"}))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=30))
                if msg.get("action") == "nodes":
                    nodes = msg.get("nodes", {}).get(self.group_id, [])
                    return [n["_id"] for n in nodes if n.get("conn", 0) & 1]
        raise RuntimeError("MeshCentral did not list its nodes")

    def wait_agents(self, count: int, timeout: float) -> list[str]:
        def enough() -> list[str] | None:
            nodes = self.online_nodes()
            return nodes if len(nodes) >= count else None

        found: list[str] = wait_for(enough, timeout, f"{count} MeshCentral agents online", step=1.0)
        return found

    def collect_garbage(self) -> bool:
        """A full GC through the V8 inspector; False when the inspector cannot be reached."""
        try:
            with urllib.request.urlopen(f"http://{self.inspector}/json/list", timeout=5) as answer:
                target = json.loads(answer.read())[0]["webSocketDebuggerUrl"]
            with connect(target, max_size=None, open_timeout=10) as ws:
                ws.send(json.dumps({"id": 1, "method": "HeapProfiler.collectGarbage"}))
                while json.loads(ws.recv(timeout=60)).get("id") != 1:
                    pass
            return True
        except (OSError, ValueError, KeyError, IndexError, TimeoutError) as exc:
            log(f"MeshCentral GC through the inspector failed: {exc}")
            return False

    def stop_agents(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents:
            self.procs.stop(proc, timeout=10)
        self.agents.clear()
        # meshagent's helpers (a terminal's or the desktop's process) may leave the
        # process group: whatever still runs a binary under this run's folders goes too
        for _ in range(20):
            left = pids_running_from(self.data.parent)
            if not left:
                return
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        log(f"meshagent processes still running after SIGKILL: {left}")

    def stop(self) -> None:
        self.stop_agents()
        if self.proc is not None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.procs.stop(self.proc, timeout=20)
            self.proc = None
