"""A real PostgreSQL for the tests: a throwaway cluster made with initdb.

The cluster runs as the ``postgres`` Unix user (initdb refuses root), or as a
user of ours (``ahpostgres``) where the machine has none, in a temp folder,
on a free port of 127.0.0.1, with a password (scram-sha-256), so the URLs the
tests hand to the broker are the ones an installation would use. Each test
gets a database of its own (:meth:`Cluster.database`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_USER_FALLBACK = "ahpostgres"
PASSWORD = "pg secret 4 tests"
BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/local/bin"), Path("/usr/bin")]


def pg_program(name: str) -> str:
    for folder in BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (scripts/install test)")
    return found


def pg_user() -> str:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        try:
            pwd.getpwnam(PG_USER_FALLBACK)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", PG_USER_FALLBACK], check=True
            )
        return PG_USER_FALLBACK
    return "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    folder: Path
    port: int
    user: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return (
            f"postgresql://postgres:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{self.port}/{database}"
        )

    def _as_pg(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", self.user, "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.folder,
        )

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        uid, gid = pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid
        for path in (self.folder, pwfile):
            os.chown(path, uid, gid)
        done = self._as_pg(
            pg_program("initdb"),
            "-D",
            str(self.data),
            "--username=postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._as_pg(
            pg_program("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "server.log"), "-w", "start",
        )  # fmt: skip
        if done.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace")
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._as_pg(pg_program("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = "ah_" + uuid.uuid4().hex[:12]
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def make_cluster(root: Path) -> Cluster:
    cluster = Cluster(root, free_port(), pg_user())
    cluster.init()
    cluster.start()
    return cluster


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A cluster for one test that stops it (the session's one is shared)."""
    root = Path(tempfile.mkdtemp(prefix="ahpg-"))  # not pytest's 0700 basetemp: postgres runs it
    root.chmod(0o755)
    try:
        cluster = make_cluster(root / "cluster")
        try:
            yield cluster
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
