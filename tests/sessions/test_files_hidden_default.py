"""The user's default agent folder is hidden whatever the agent's Hello says.

A machine service's Hello names no folder, nor does an older per-user agent's; yet
the signed-in user may keep an agent of their own (``~/.config/allowhelp/agent``,
its private host key). The broker's own check (``fileshidden.HiddenFolders`` with
the channel's ``UsersOwn``) against OpenSSH's real sftp-server started in a home
folder, reached as the broker reaches it (``tests/kit/sftpkit.py`` ``real_sftp``),
with an empty ``files_hidden``: the key is refused, ``files.refused`` on the record;
a folder made during the session is hidden from then on, and one whose place is a
link elsewhere too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sftpkit import SFTP_SERVER, real_sftp

from allowhelp.broker.audit.log import AuditLog
from allowhelp.broker.errors import Forbidden
from allowhelp.broker.model.session import Session, State
from allowhelp.broker.sessions.fileshidden import HiddenFolders, UsersOwn

pytestmark = pytest.mark.skipif(not SFTP_SERVER, reason="needs OpenSSH's sftp-server")

LIMIT = 5.0
FOLDER = ".config/allowhelp/agent"


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(tmp_path / "audit.sqlite3")
    yield log
    log.close()


def a_session() -> Session:
    return Session(
        id="s-1", agent_id="a-1", hostname="pc", technician="tech", technician_name="Tech",
        kind="files", reason="look", phrase="x", state=State.ACTIVE,
    )  # fmt: skip


def a_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / FOLDER).mkdir(parents=True)
    (home / FOLDER / "host_key").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (home / "ordinary.txt").write_text("ordinary\n")
    return home


async def test_a_silent_hello_still_hides_the_users_agent_folder(
    tmp_path: Path, audit: AuditLog
) -> None:
    home = a_home(tmp_path)
    (home / "innocent").symlink_to(home / ".config")
    hidden, session, own = HiddenFolders(audit), a_session(), UsersOwn()
    async with real_sftp(home) as (client, _):
        for path in (f"{FOLDER}/host_key", FOLDER, f"{home}/{FOLDER}", "innocent/allowhelp/agent"):
            with pytest.raises(Forbidden) as refused:
                await hidden.check(session, "tech", client, path, hidden=(), own=own, limit=LIMIT)
            assert refused.value.code == "path_hidden"
        with pytest.raises(Forbidden):  # an upload into it
            await hidden.check(
                session, "tech", client, f"{FOLDER}/new", hidden=(), own=own, limit=LIMIT,
                upload=True,
            )  # fmt: skip
        for path in ("ordinary.txt", ".config", ".config/allowhelp", "."):
            await hidden.check(session, "tech", client, path, hidden=(), own=own, limit=LIMIT)
    kept = [r for r in audit.records() if r.type == "files.refused"]
    assert len(kept) == 5
    real = str((home / FOLDER).resolve())
    assert kept[0].details["why"] == "path_hidden" and kept[0].details["hidden"] == real
    assert kept[0].details["resolved"] == f"{real}/host_key"


async def test_a_folder_made_during_the_session_is_hidden_from_then_on(
    tmp_path: Path, audit: AuditLog
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hidden, session, own = HiddenFolders(audit), a_session(), UsersOwn()
    async with real_sftp(home) as (client, _):
        await hidden.check(session, "tech", client, ".", hidden=(), own=own, limit=LIMIT)
        assert own.folder is None  # nothing there yet
        # the user's ``.config`` is a link elsewhere, made now, and the agent enrolled
        (home / ".config").symlink_to(elsewhere)
        (elsewhere / "allowhelp" / "agent").mkdir(parents=True)
        (elsewhere / "allowhelp" / "agent" / "host_key").write_bytes(b"key")
        for path in (f"{FOLDER}/host_key", f"{elsewhere}/allowhelp/agent/host_key"):
            with pytest.raises(Forbidden):
                await hidden.check(session, "tech", client, path, hidden=(), own=own, limit=LIMIT)
        assert own.folder == str((elsewhere / "allowhelp" / "agent").resolve())


async def test_the_hellos_folders_are_still_hidden_beside(tmp_path: Path, audit: AuditLog) -> None:
    home = a_home(tmp_path)
    other = tmp_path / "other-agent"
    other.mkdir()
    (other / "host_key").write_bytes(b"key")
    hidden, session, own = HiddenFolders(audit), a_session(), UsersOwn()
    named = (str(other.resolve()),)
    async with real_sftp(home) as (client, _):
        for path in (f"{other}/host_key", f"{FOLDER}/host_key"):
            with pytest.raises(Forbidden):
                await hidden.check(
                    session, "tech", client, path, hidden=named, own=own, limit=LIMIT
                )
