"""Each screen engine on a busy screen: time to the first picture, and updates per second (#15).

    .venv/bin/python -m bench.wayland [--seconds 5] [--runs 3] [--all-monitors]   (as root)

A local user ``ahbench`` is made for the run (``useradd``) and removed after.
Two desktops, each 1024x768, both busy with random base64 text scrolling over
most of the screen, run as that user:

``x11``      Xvfb + a Tk text window (root's Python: no xterm here); the engine is
             x11vnc on a socketpair.
``wlroots``  sway headless (pixman) + foot; the engine is wayvnc on a private socket.
``portal``   headless GNOME (mutter --virtual-monitor, pipewire, wireplumber,
             xdg-desktop-portal-gnome) + foot; the engine is portalvnc (view-only),
             after GNOME's dialog, answered here as the tests do (keys through
             mutter's RemoteDesktop API: tests/kit/gnome_dialog.py).

``--all-monitors`` measures, interleaved in the same run, ``wlroots`` and
``portal`` against ``wlroots-all`` and ``portal-all``: the same desktop with a
second monitor (800x600, right of the first, not busy) and the technician
asking for ``all`` (one wayvnc per output composed by ``wayvncall``; the
portal's two streams composed by ``portalvnc --all-monitors``, GNOME's dialog
answered with both monitors ticked): a 1824x768 picture.

For each, the measurement runs *as the user*, with the system Python, in the
session's environment, through the agent's own code (``screen.launch_screen``,
exactly what the session helper does after the click): the clock starts when
the engine is asked for, and stops when the first complete FramebufferUpdate
(Raw, the whole screen) has arrived on the socket — that is the part of
"click to first picture" the engine adds (the broker's part is in
``bench.screen``). For ``portal`` the clock starts when the engine speaks, that
is once the user has answered GNOME's dialog (a person's reading time is not the
engine's). Then noVNC's loop (an incremental request, one complete update,
repeat) runs for ``--seconds`` and counts updates and bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from allowhelp.agent.desktop import this_session
from allowhelp.agent.reaper import end_process_group
from allowhelp.agent.screenlaunch import launch_screen
from bench.common import ROOT, dump_json, fmt, log, machine, median, table

USER = "ahbench"
SIZE = (1024, 768)
SECOND = (800, 600)  # the second monitor of the "-all" desktops
BUSY = "base64 /dev/urandom"
SYSTEM_PY = "/usr/bin/python3"
SPOKE: list[float] = []  # when the engine said its RFB version
DIALOG = ROOT / "tests" / "kit" / "gnome_dialog.py"
GNOME_SESSION = """
export XDG_SESSION_TYPE=wayland XDG_CURRENT_DESKTOP=GNOME
cd "$XDG_RUNTIME_DIR"
pipewire > pipewire.log 2>&1 &
until [ -S pipewire-0 ]; do sleep 0.05; done
wireplumber > wireplumber.log 2>&1 &
mutter --headless --wayland --no-x11 {monitors} > mutter.log 2>&1 &
until [ -S wayland-0 ]; do sleep 0.05; done
export WAYLAND_DISPLAY=wayland-0
dbus-update-activation-environment WAYLAND_DISPLAY XDG_CURRENT_DESKTOP XDG_SESSION_TYPE \\
    XDG_RUNTIME_DIR
foot sh -c '{busy}' > foot.log 2>&1 &
echo "$DBUS_SESSION_BUS_ADDRESS" > bus.part && mv bus.part bus
wait
"""
# The X11 desktop's busy window: random text scrolling over most of the screen.
BUSY_TK = """
import base64, os, tkinter
root = tkinter.Tk()
root.geometry("1000x740+0+0")
text = tkinter.Text(root, font=("Monospace", 9))
text.pack(fill="both", expand=True)
def more():
    text.insert("end", base64.b64encode(os.urandom(3000)).decode() + "\\n")
    text.see("end")
    root.after(10, more)
more()
root.mainloop()
"""


# --- inside: as the user, in the session ------------------------------------


def _read(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the screen server closed the socket")
        data += chunk
    return bytes(data)


def _handshake(sock: socket.socket) -> tuple[int, int, int]:
    _read(sock, 12)
    SPOKE.append(time.monotonic())
    with contextlib.suppress(OSError):
        Path(os.environ["XDG_RUNTIME_DIR"], "bench-spoke").touch()
    sock.sendall(b"RFB 003.008\n")
    count = _read(sock, 1)[0]
    _read(sock, count)
    sock.sendall(b"\x01")
    if _read(sock, 4) != b"\0\0\0\0":
        raise ConnectionError("security refused")
    sock.sendall(b"\x01")
    head = _read(sock, 24)
    width, height, bpp = struct.unpack_from(">HHB", head)
    _read(sock, struct.unpack_from(">I", head, 20)[0])
    sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # Raw only
    return width, height, bpp


def _update(sock: socket.socket, bpp: int) -> tuple[int, int]:
    """One complete FramebufferUpdate: (pixels covered, bytes read)."""
    while True:
        kind = _read(sock, 1)[0]
        if kind == 0:
            break
        if kind == 2:
            continue
        if kind == 3:
            _read(sock, struct.unpack(">3xI", _read(sock, 7))[0])
            continue
        raise ConnectionError(f"unexpected server message {kind}")
    count = struct.unpack(">xH", _read(sock, 3))[0]
    pixels = size = 0
    for _ in range(count):
        _, _, w, h, encoding = struct.unpack(">HHHHi", _read(sock, 12))
        if encoding == -223:  # DesktopSize pseudo-rectangle
            continue
        _read(sock, w * h * bpp // 8)
        pixels += w * h
        size += 12 + w * h * bpp // 8
    return pixels, size


async def _measure(seconds: float, monitor: str) -> dict[str, Any]:
    engine = this_session().engine
    started = time.monotonic()
    launch = launch_screen(os.environ, view_only=engine == "portal", monitor=monitor)
    try:
        sock = await launch.connect()
        sock.setblocking(True)
        width, height, bpp = _handshake(sock)
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        covered, _ = _update(sock, bpp)
        first = time.monotonic() - (SPOKE[0] if engine == "portal" else started)
        if covered < width * height:
            raise ConnectionError(f"the first picture covers {covered} of {width * height} pixels")
        updates = received = 0
        loop_start = time.monotonic()
        while time.monotonic() - loop_start < seconds:
            sock.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, width, height))
            _, size = _update(sock, bpp)
            updates += 1
            received += size
        elapsed = time.monotonic() - loop_start
        sock.close()
    except ConnectionError as exc:
        await end_process_group(launch.proc, (signal.SIGTERM,), 2.0, name="screen")
        said = launch.proc.stderr.read().decode(errors="replace") if launch.proc.stderr else ""
        raise ConnectionError(f"{exc}; the engine said: {said.strip()[-300:]}") from exc
    finally:
        await end_process_group(launch.proc, (signal.SIGTERM,), 2.0, name="screen")
        launch.cleanup()
    return {
        "engine": engine + ("-all" if monitor else ""),
        "size": [width, height],
        "first_picture_s": first,
        "updates_per_s": updates / elapsed,
        "mib_per_s": received / elapsed / 2**20,
    }


# --- outside: root makes the user and the desktops ----------------------------


@contextlib.contextmanager
def bench_user() -> Iterator[pwd.struct_passwd]:
    subprocess.run(["userdel", "-r", USER], check=False, capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
        subprocess.run(["userdel", "-r", USER], check=False, capture_output=True)


def _as_user(account: pwd.struct_passwd, env: dict[str, str], *argv: str) -> list[str]:
    base = {"HOME": account.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env}
    return (
        ["runuser", "-u", account.pw_name, "--", "env", "-i"]
        + [f"{k}={v}" for k, v in base.items()]
        + list(argv)
    )


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@contextlib.contextmanager
def desktop(
    engine: str,
    account: pwd.struct_passwd,
    sizes: tuple[tuple[int, int], tuple[int, int]] = (SIZE, SECOND),
    busy: str = BUSY,
) -> Iterator[dict[str, str]]:
    """The busy desktop of ``engine`` as the user; yields the session's environment.

    ``sizes``: its monitors' (the second only for "-all"); ``busy``: "" for an idle
    sway (nothing but the pointer changes)."""
    runtime = Path(tempfile.mkdtemp(prefix=f"ahbench-{account.pw_uid}-", dir="/tmp"))
    os.chown(runtime, account.pw_uid, account.pw_gid)
    os.chmod(runtime, 0o700)
    procs: list[subprocess.Popen[bytes]] = []
    (width, height), second = sizes
    two = engine.endswith("-all")
    try:
        if engine == "x11":
            display = ":77"
            env = {"DISPLAY": display, "XDG_SESSION_TYPE": "x11", "XDG_RUNTIME_DIR": str(runtime)}
            xvfb = ["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"]
            procs.append(_spawn(_as_user(account, {}, *xvfb)))
            _wait(lambda: Path(f"/tmp/.X11-unix/X{display[1:]}").exists(), 20, "Xvfb")
            window = [sys.executable, "-c", BUSY_TK]  # no xterm here: Tk, as root, on their X
            procs.append(_spawn(["env", f"DISPLAY={display}", *window]))
        elif engine.startswith("portal"):
            script = runtime / "session.sh"
            shown = sizes if two else sizes[:1]
            monitors = " ".join(f"--virtual-monitor {w}x{h}" for w, h in shown)
            script.write_text(GNOME_SESSION.format(monitors=monitors, busy=BUSY))
            os.chown(script, account.pw_uid, account.pw_gid)
            session = ["dbus-run-session", "--", "bash", str(script)]
            procs.append(_spawn(_as_user(account, {"XDG_RUNTIME_DIR": str(runtime)}, *session)))
            bus = runtime / "bus"
            _wait(bus.exists, 60, "the GNOME session")
            env = {
                "WAYLAND_DISPLAY": "wayland-0",
                "XDG_RUNTIME_DIR": str(runtime),
                "XDG_SESSION_TYPE": "wayland",
                "XDG_CURRENT_DESKTOP": "GNOME",
                "DBUS_SESSION_BUS_ADDRESS": bus.read_text().strip(),
            }
        else:
            config = runtime / "sway.conf"
            lines = [f"output HEADLESS-1 resolution {width}x{height} position 0 0"]
            if two:
                lines.append(
                    f"output HEADLESS-2 resolution {second[0]}x{second[1]} position {width} 0"
                )
                lines.append("focus output HEADLESS-1")
            if busy:
                lines.append(f"exec foot sh -c '{busy}'")
            config.write_text("\n".join(lines) + "\n")
            os.chown(config, account.pw_uid, account.pw_gid)
            wl = {"XDG_RUNTIME_DIR": str(runtime), "WLR_BACKENDS": "headless"}
            wl |= {"WLR_HEADLESS_OUTPUTS": "2"} if two else {}
            wl |= {"WLR_RENDERER": "pixman", "WLR_LIBINPUT_NO_DEVICES": "1"}
            procs.append(_spawn(_as_user(account, wl, "sway", "-c", str(config))))
            socket_path = _wait(
                lambda: next((p for p in runtime.glob("wayland-*") if "lock" not in p.name), None),
                30,
                "sway",
            )
            ipc = _wait(lambda: next(runtime.glob("sway-ipc.*.sock"), None), 30, "sway's IPC")
            env = {
                "WAYLAND_DISPLAY": socket_path.name,
                "XDG_RUNTIME_DIR": str(runtime),
                "XDG_SESSION_TYPE": "wayland",
                "XDG_CURRENT_DESKTOP": "sway",
                "SWAYSOCK": str(ipc),
            }
        yield env
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
        portal_fuse = f" {runtime / 'doc'} "  # the document portal's, left mounted
        if portal_fuse in Path("/proc/mounts").read_text():  # (ismount cannot stat it)
            subprocess.run(["umount", "-l", portal_fuse.strip()], check=False)
        shutil.rmtree(runtime, ignore_errors=True)


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def run_engine(engine: str, account: pwd.struct_passwd, seconds: float) -> dict[str, Any]:
    with desktop(engine, account) as env:
        # the busy terminal is up and scrolling before the clock starts
        time.sleep(2)  # no fact to await without a client of the compositor's own
        argv = _as_user(
            account,
            {**env, "PYTHONPATH": str(ROOT)},
            SYSTEM_PY,
            "-m",
            "bench.wayland",
            "--inner",
            "--seconds",
            str(seconds),
            *(["--monitor", "all"] if engine.endswith("-all") else []),
        )
        inner = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        if engine.startswith("portal"):
            _answer_gnome(account, env, inner, "share-all" if engine.endswith("-all") else "share")
        try:
            out, err = inner.communicate(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            os.killpg(inner.pid, signal.SIGKILL)
            raise
        if inner.returncode != 0:
            raise RuntimeError(f"{engine}: {err.strip()[-500:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def _answer_gnome(
    account: pwd.struct_passwd, env: dict[str, str], inner: subprocess.Popen[str], how: str
) -> None:
    """Press Share in GNOME's dialog until the engine speaks (as the tests do)."""
    spoke = Path(env["XDG_RUNTIME_DIR"], "bench-spoke")
    deadline = time.monotonic() + 90
    while not spoke.exists() and inner.poll() is None and time.monotonic() < deadline:
        press = _as_user(account, env, SYSTEM_PY, str(DIALOG), how)
        subprocess.run(press, capture_output=True, timeout=30, check=False)
        for _ in range(30):
            if spoke.exists() or inner.poll() is not None:
                break
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--all-monitors", action="store_true", help="all monitors vs one")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--monitor", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(asyncio.run(_measure(args.seconds, args.monitor))))
        return
    if os.geteuid() != 0:
        sys.exit("bench.wayland: run as root (it makes a local user for the desktops)")
    engines = ["wlroots", "wlroots-all", "portal", "portal-all"] if args.all_monitors else []
    engines = engines or ["x11", "wlroots", "portal"]
    results: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    with bench_user() as account:
        for run in range(args.runs):
            for engine, runs in results.items():
                log(f"run {run + 1}/{args.runs}: {engine}")
                runs.append(run_engine(engine, account, args.seconds))
    rows = []
    for engine, runs in results.items():
        rows.append(
            [
                engine,
                fmt(median([r["first_picture_s"] for r in runs]) * 1000, 0),
                fmt(median([r["updates_per_s"] for r in runs])),
                fmt(median([r["mib_per_s"] for r in runs])),
            ]
        )
    print(table(["engine", "first picture (ms)", "updates/s", "MiB/s"], rows))
    name = "wayland-monitors.json" if args.all_monitors else "wayland.json"
    out = ROOT / "bench" / "results" / name
    dump_json(out, {"machine": machine(), "seconds": args.seconds, "runs": results})
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
