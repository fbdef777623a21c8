"""``backup`` and ``restore`` at their edges: what they refuse (one line on stderr,
exit 2, nothing half-written), the warning about an open folder, recordings kept
elsewhere.

The data folder is a running broker's (the module's ``staffed`` broker); the
damaged backups are made from one real backup of it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from harness import Broker, audit_locked, broker_cli

PREFIX = "allowhelp-broker: error: "


@pytest.fixture(scope="module")
def good(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plain-tar backup of the running broker."""
    path = tmp_path_factory.mktemp("good") / "broker.tar"
    done = broker_cli("backup", "--data", str(broker.data), "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


def refused(*args: str) -> str:
    """Run the command; it must fail with exit 2 and exactly one line on stderr."""
    done = broker_cli(*args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(PREFIX) and "Traceback" not in done.stderr
    return done.stderr.removeprefix(PREFIX).rstrip("\n")


def restore_refused(backup: Path, target: Path) -> str:
    message = refused("restore", str(backup), "--data", str(target))
    assert not target.exists(), "a refused restore left its folder"
    assert [p for p in target.parent.iterdir() if ".restoring-" in p.name] == []
    return message


def members(backup: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(backup) as tar:
        found = []
        for info in tar.getmembers():
            member = tar.extractfile(info)
            assert member is not None
            found.append((info, member.read()))
        return found


def write_tar(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, raw in entries:
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_a_truncated_backup_is_refused(good: Path, tmp_path: Path) -> None:
    raw = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])
    assert restore_refused(cut, tmp_path / "new") == (
        f"{cut} is truncated or damaged (unexpected end of data): use another copy of the backup"
    )
    # Cut where a member ends: the tar itself looks whole, the manifest is missing.
    with tarfile.open(good) as tar:
        first = tar.getmembers()[1]
    boundary = tmp_path / "boundary.tar"
    boundary.write_bytes(raw[: first.offset_data + -(-first.size // 512) * 512])
    assert restore_refused(boundary, tmp_path / "new") == (
        f"{boundary} is truncated (it ends before its manifest): use another copy of the backup"
    )
    squeezed = tmp_path / "cut.tar.gz"
    squeezed.write_bytes(gzip.compress(raw)[:-100])
    assert restore_refused(squeezed, tmp_path / "new") == (
        f"{squeezed} is truncated or damaged (Compressed file ended before the end-of-stream "
        "marker was reached): use another copy of the backup"
    )


def test_a_random_file_and_a_foreign_tar_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.tar"
    noise.write_bytes(os.urandom(50_000))
    assert restore_refused(noise, tmp_path / "new") == (
        f"{noise} is not an allowhelp broker backup (not a tar file)"
    )
    foreign = write_tar(tmp_path / "foreign.tar", [("notes/todo.txt", b"milk\n")])
    assert restore_refused(foreign, tmp_path / "new") == (
        f"{foreign} is not an allowhelp broker backup (it holds 'notes/todo.txt')"
    )
    # Our folder name, but a path that would climb out of the new folder.
    escape = write_tar(tmp_path / "escape.tar", [("data/../../escaped", b"x")])
    assert restore_refused(escape, tmp_path / "new") == (
        f"{escape} is not an allowhelp broker backup (it holds 'data/../../escaped')"
    )
    assert not (tmp_path.parent / "escaped").exists()
    alien = json.dumps({"format": "something-else"}).encode()
    unknown = write_tar(
        tmp_path / "unknown.tar", [("data/ca.pem", b"pem"), ("manifest.json", alien)]
    )
    assert restore_refused(unknown, tmp_path / "new") == (
        f"{unknown} is not an allowhelp broker backup (no allowhelp-broker-backup manifest)"
    )


def test_a_member_that_does_not_match_its_digest_is_refused(good: Path, tmp_path: Path) -> None:
    entries = [(info.name, raw) for info, raw in members(good)]
    forged = [
        (n, b"-----BEGIN CERTIFICATE-----\n" if n == "data/ca.pem" else r) for n, r in entries
    ]
    bad = write_tar(tmp_path / "forged.tar", forged)
    assert restore_refused(bad, tmp_path / "new") == (
        f"{bad} is damaged (ca.pem does not match its SHA-256 in the manifest): "
        "use another copy of the backup"
    )
    dropped = write_tar(tmp_path / "dropped.tar", [e for e in entries if e[0] != "data/ca.key"])
    assert restore_refused(dropped, tmp_path / "new") == (
        f"{dropped} is truncated or damaged (ca.key is missing): use another copy"
    )


def test_restore_never_writes_over_a_folder_with_content(
    good: Path, broker: Broker, tmp_path: Path
) -> None:
    before = sorted(p.name for p in broker.data.iterdir())
    message = refused("restore", str(good), "--data", str(broker.data))  # the live broker's
    assert message == (
        f"{broker.data} is not empty: restore into a new folder (never over a broker's data "
        "folder; stop that broker and move its folder aside first)"
    )
    assert sorted(p.name for p in broker.data.iterdir()) == before
    assert [p for p in broker.data.parent.iterdir() if ".restoring-" in p.name] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    done = broker_cli("restore", str(good), "--data", str(empty))  # an empty one is fine
    assert done.returncode == 0, done.stderr
    assert (empty / "ca.key").is_file()


def test_backup_refuses_a_missing_output_folder_and_a_foreign_data_folder(
    broker: Broker, tmp_path: Path
) -> None:
    output = tmp_path / "nowhere" / "b.tar"
    assert refused("backup", "--data", str(broker.data), "--output", str(output)) == (
        f"the folder {output.parent} does not exist: create it or give --output another folder"
    )
    assert not output.parent.exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("not a broker\n")
    target = tmp_path / "b.tar"
    assert refused("backup", "--data", str(home), "--output", str(target)) == (
        f"{home} is not a broker's data folder (no ca.pem, ca.key, tls.pem, tls.key, "
        "tunnel_key, broker.sqlite3, audit.sqlite3): give --data the folder serve uses"
    )
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]  # no audit log made there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_no_backup_without_its_audit_record(broker: Broker, tmp_path: Path) -> None:
    output = tmp_path / "b.tar"
    with audit_locked(broker):
        message = refused("backup", "--data", str(broker.data), "--output", str(output))
    assert message.startswith("no backup taken: audit log unavailable: ")
    assert message.endswith("; the action was refused")
    assert list(tmp_path.iterdir()) == []  # neither the file nor FILE.partial


def test_a_backup_in_a_folder_others_can_read_says_so(broker: Broker, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    output = shared / "b.tar"
    done = broker_cli("backup", "--data", str(broker.data), "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        f"allowhelp-broker: warning: {shared} is open to other users (mode 0755): the backup "
        "holds the broker's private keys, keep it in a folder only you can read\n"
    )
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_recordings_kept_elsewhere_are_taken_with_recordings_dir(
    broker: Broker, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "casts"
    elsewhere.mkdir()
    (elsewhere / "Abc123.cast").write_bytes(b'{"version": 2}\n')
    (elsewhere / "Scr456.rfb").write_bytes(b"AHRFB001")  # a screen's recording goes too
    (elsewhere / "notes.txt").write_text("not a recording\n")
    (elsewhere / "Link0.cast").symlink_to(broker.data / "ca.key")  # never followed
    output = tmp_path / "b.tar"
    done = broker_cli(
        "backup",
        "--data",
        str(broker.data),
        "--output",
        str(output),
        "--recordings",
        str(elsewhere),
    )
    assert done.returncode == 0, done.stderr
    names = [info.name for info, _ in members(output)]
    assert [n for n in names if "recordings" in n] == [
        "data/recordings/Abc123.cast",
        "data/recordings/Scr456.rfb",
    ]
    restored = tmp_path / "restored"
    done = broker_cli("restore", str(output), "--data", str(restored))
    assert done.returncode == 0, done.stderr
    assert (restored / "recordings" / "Abc123.cast").read_bytes() == b'{"version": 2}\n'
    assert (restored / "recordings" / "Scr456.rfb").read_bytes() == b"AHRFB001"
    missing = tmp_path / "none"
    assert refused(
        "backup", "--data", str(broker.data), "--output", str(output), "--recordings", str(missing)
    ) == (f"--recordings {missing} is not a folder: give the one serve uses")


def test_a_partial_file_in_the_way_is_refused_and_left_alone(
    broker: Broker, tmp_path: Path
) -> None:
    output = tmp_path / "b.tar"
    partial = tmp_path / "b.tar.partial"
    partial.write_bytes(b"someone else's")  # a backup running, or one killed
    assert refused("backup", "--data", str(broker.data), "--output", str(output)) == (
        f"{partial} already exists (another backup to b.tar is running, or one was killed): "
        "remove it and try again"
    )
    assert partial.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.partial"]


def test_a_broken_chain_is_restored_as_it_was_and_said_loudly(good: Path, tmp_path: Path) -> None:
    """A restore is faithful: evidence of tampering comes back as evidence, with a warning."""
    source = tmp_path / "source"
    assert broker_cli("restore", str(good), "--data", str(source)).returncode == 0
    conn = sqlite3.connect(source / "audit.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 2")
    conn.close()
    output = tmp_path / "tampered.tar"
    done = broker_cli("backup", "--data", str(source), "--output", str(output))  # no broker runs
    assert done.returncode == 0, done.stderr
    done = broker_cli("restore", str(output), "--data", str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(
        "allowhelp-broker: warning: the backup's audit log is NOT intact: record 2 "
    ), done.stderr
    verified = broker_cli("audit", "verify", "--data", str(tmp_path / "again"))
    assert verified.returncode == 1 and "record 2" in verified.stdout
