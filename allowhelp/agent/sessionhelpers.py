"""The session helpers connected to the machine service, and who of them is signed in.

Each helper is known by its connection and the uid the kernel gave for it
(``SO_PEERCRED``); what it said of itself (language, screen) is kept with it
(``signedin.HelperInfo``). ``signedin.choose`` picks the one whose user sits at
the screen now.
"""

from __future__ import annotations

from allowhelp.agent.i18n import LANGUAGES
from allowhelp.agent.seqpacket import PacketConn
from allowhelp.agent.signedin import ActiveUid, HelperInfo, choose
from allowhelp.protocol import helper as hp

# What a signed-in user's helper says of its session: the screen's engine, problem,
# desktop, monitors; and whether it starts sftp-server read-only (``files_view_only``).
ScreenSaid = tuple[str, str, str, str, bool]


class SessionHelpers:
    """The registered helpers, by connection; a connection is one helper at most."""

    def __init__(self, active_uid: ActiveUid | None) -> None:
        self._active_uid = active_uid
        self._by_conn: dict[PacketConn, HelperInfo] = {}
        self._next_id = 0

    def __contains__(self, conn: object) -> bool:
        return conn in self._by_conn

    def add(self, conn: PacketConn, hello: hp.HelperHello) -> HelperInfo:
        self._next_id += 1
        language = hello.language if hello.language in LANGUAGES else ""
        info = HelperInfo(
            self._next_id,
            conn.uid,
            conn.pid,
            language=language,
            screen=hello.screen,
            screen_problem=hello.screen_problem,
            desktop=hello.desktop,
            monitors=hello.monitors,
            files_view_only=hello.files_view_only,
        )
        self._by_conn[conn] = info
        return info

    def remove(self, conn: PacketConn) -> HelperInfo | None:
        return self._by_conn.pop(conn, None)

    def count_of(self, uid: int) -> int:
        return sum(1 for info in self._by_conn.values() if info.uid == uid)

    def conns_of(self, uid: int | None) -> list[PacketConn]:
        return [conn for conn, info in self._by_conn.items() if info.uid == uid]

    def newest_of(self, uid: int | None) -> PacketConn | None:
        """The connection of ``uid``'s newest helper (None: it has none)."""
        mine = [(info.conn_id, conn) for conn, info in self._by_conn.items() if info.uid == uid]
        return max(mine, key=lambda pair: pair[0])[1] if mine else None

    def program_helper(self, uid: int | None, *, read_only_files: bool) -> PacketConn:
        """The connection of ``uid``'s newest helper, to start a program on; a
        ``RuntimeError`` (the channel ends with it) when it has none, or when the
        program is a view-only files one and that helper is older than view-only files
        (it would start sftp-server read-write)."""
        mine = [
            (info.conn_id, conn, info) for conn, info in self._by_conn.items() if info.uid == uid
        ]
        if not mine:
            raise RuntimeError("the user who allowed it has no session helper running any more")
        _conn_id, conn, info = max(mine, key=lambda found: found[0])
        if read_only_files and not info.files_view_only:
            raise RuntimeError(
                "the user's session helper is older than view-only files (it would not start"
                " sftp-server read-only): restart `allowhelp-agent session` there"
            )
        return conn

    def language_of(self, uid: int | None) -> str:
        """The language ``uid``'s newest helper said ("": none said)."""
        mine = [info for info in self._by_conn.values() if info.uid == uid]
        return max(mine, key=lambda info: info.conn_id).language if mine else ""

    def signed_in(self) -> HelperInfo | None:
        """The helper of the user signed in now, or None for nobody."""
        return choose(list(self._by_conn.values()), self._active_uid)

    def screen_said(self) -> ScreenSaid | None:
        """What the signed-in user's helper said of the screen (None: nobody)."""
        chosen = self.signed_in()
        if chosen is None:
            return None
        return (
            chosen.screen,
            chosen.screen_problem,
            chosen.desktop,
            chosen.monitors,
            chosen.files_view_only,
        )
