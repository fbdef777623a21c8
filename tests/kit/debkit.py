"""Building the .debs, and a throwaway Debian 12 root to install them into.

The root (mmdebstrap, minbase, plus the agent's dependencies so that installing
needs no network) costs about a minute to make; it is made once per package
list and kept in ``/var/cache/allowhelp-tests`` (``ALLOWHELP_TEST_CACHE``), so
later runs unpack it in seconds. The Debian mirror is read from this
machine's apt sources at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]  # tests/kit/ -> the repository
BUILD_DEBS = REPO / "packaging" / "build-debs"


@dataclass(frozen=True)
class Debs:
    version: str
    broker: Path
    agent: Path


def build(dist: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BUILD_DEBS), str(dist), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"build-debs failed:\n{done.stdout}\n{done.stderr}"


def wheel_of_this_tree(dist: Path) -> Path:
    """``dist`` with allowhelp-V-py3-none-any.whl in it, as scripts/package makes it."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("no dpkg-deb on this machine: the .debs are built on Debian or Ubuntu")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dist


def debs_in(dist: Path) -> Debs:
    """The one build in ``dist``: allowhelp-broker_V_ARCH.deb and allowhelp-agent_V_ARCH.deb."""
    brokers = sorted(dist.glob("allowhelp-broker_*.deb"))
    agents = sorted(dist.glob("allowhelp-agent_*.deb"))
    assert len(brokers) == len(agents) == 1, sorted(os.listdir(dist))
    version = brokers[0].name.split("_")[1]
    assert agents[0].name.split("_")[1] == version
    return Debs(version, brokers[0], agents[0])


SUITE = "bookworm"
# python3 for both; passwd for the broker's user; x11vnc and zenity: the agent's Depends
PACKAGES = ("python3", "passwd", "x11vnc", "zenity")
CACHE = Path(os.environ.get("ALLOWHELP_TEST_CACHE", "/var/cache/allowhelp-tests"))
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


def _deb822_uris(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split()


def _one_line_uris(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def debian_mirror() -> str | None:
    """The first Debian archive in this machine's apt sources (not a -security one)."""
    sources = Path("/etc/apt/sources.list.d")
    found: list[tuple[str, list[str]]] = []
    for path in sorted(sources.glob("*.sources")):
        found += _deb822_uris(path.read_text())
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            found += _one_line_uris(path.read_text())
    for uri, suites in found:
        if any(not suite.endswith(("-security", "-updates", "-backports")) for suite in suites):
            return uri
    return None


def cached_root() -> Path:
    """The tarball of the root, made now if this package list has none yet."""
    key = hashlib.sha256(json.dumps([SUITE, "minbase", PACKAGES]).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    mirror = debian_mirror()
    if mirror is None:
        raise AssertionError("no Debian archive in /etc/apt/sources.list{,.d}: cannot make a root")
    if shutil.which("mmdebstrap") is None:
        raise AssertionError("mmdebstrap is missing: scripts/install test installs it")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(f".{os.getpid()}.partial.tar.zst")
    done = subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            '--aptopt=APT::Install-Recommends "false"',
            SUITE,
            str(partial),
            mirror,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise AssertionError(f"mmdebstrap failed:\n{done.stderr[-3000:]}")
    partial.rename(tarball)
    return tarball


class Chroot:
    """Commands run in the root (same network namespace: 127.0.0.1 is shared)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(self, *argv: str) -> list[str]:
        return ["chroot", str(self.path), *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        stdin: str | None = None,
        home: str = "/root",
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**ENV, "HOME": home},
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")


@contextlib.contextmanager
def debian_root(where: Path) -> Iterator[Chroot]:
    """A fresh copy of the cached root with /proc mounted; unmounted and deleted after."""
    tarball = cached_root()
    root = where / "root"
    root.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(tarball), "-C", str(root)], check=True)
    # As on any installed system: the broker's own name, localhost, resolves.
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield Chroot(root)
    finally:
        subprocess.run(["umount", str(proc)], check=False)
        if not os.path.ismount(proc):
            shutil.rmtree(root, ignore_errors=True)
