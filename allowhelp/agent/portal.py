"""A ScreenCast session through xdg-desktop-portal (org.freedesktop.portal.ScreenCast).

Imported only by ``portalvnc`` (its own process): it needs PyGObject (``gi``),
which the system Python has on GNOME and KDE desktops (python3-gi) and which the
agent's own dependencies do not bring.

The portal's calls answer through a ``Request`` object: its ``Response`` signal
(0 success, 1 the user cancelled, 2 other) arrives later; the path is known
before the call (``/org/freedesktop/portal/desktop/request/SENDER/TOKEN``), so
the subscription is made first and cannot miss it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gi.repository import Gio, GLib  # type: ignore[import-not-found,unused-ignore]

from allowhelp.agent.castlayout import Stream
from allowhelp.agent.errors import AgentError

DESKTOP = "org.freedesktop.portal.Desktop"
DESKTOP_PATH = "/org/freedesktop/portal/desktop"
SCREENCAST = "org.freedesktop.portal.ScreenCast"
REMOTE_DESKTOP = "org.freedesktop.portal.RemoteDesktop"
KEYBOARD, POINTER = 1, 2
SESSION = "org.freedesktop.portal.Session"
MONITOR = 1
CURSOR_EMBEDDED = 2
CALL_TIMEOUT_MS = 10_000
ANSWER_TIMEOUT = 20.0
DIALOG_TIMEOUT = 120.0  # the user reads the desktop's dialog and picks a screen
RESPONSES = {1: "the user declined the desktop's screen-sharing dialog"}


class PortalError(AgentError):
    """The portal said no, or did not answer; the message says which, for the technician."""


@dataclass(frozen=True)
class Cast:
    fd: int  # the PipeWire remote, for pipewiresrc
    streams: tuple[Stream, ...]  # one per monitor shared, as the portal gave them


def described(streams: Sequence[Any]) -> tuple[Stream, ...]:
    """The portal's ``a(ua{sv})`` streams: node, ``size`` and (monitors) ``position``."""
    found: list[Stream] = []
    for node, properties in streams:
        width, height = properties.get("size", (0, 0))
        position = properties.get("position")
        place = (int(position[0]), int(position[1])) if position is not None else None
        found.append(Stream(int(node), int(width), int(height), place))
    return tuple(found)


class ScreenCast:
    def __init__(self) -> None:
        try:
            self._bus: Any = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        except GLib.Error as exc:
            raise PortalError(f"no session bus for the portal: {exc.message}") from exc
        self._sender = str(self._bus.get_unique_name())[1:].replace(".", "_")
        self._tokens = itertools.count(1)
        self._session = ""

    def _request(
        self, method: str, signature: str, args: list[Any], timeout: float, iface: str = SCREENCAST
    ) -> Any:
        token = f"allowhelp{next(self._tokens)}"
        path = f"{DESKTOP_PATH}/request/{self._sender}/{token}"
        args[-1]["handle_token"] = GLib.Variant("s", token)
        loop = GLib.MainLoop()
        answer: list[Any] = []

        def respond(*params: Any) -> None:
            answer.append(params[-1].unpack())
            loop.quit()

        subscription = self._bus.signal_subscribe(
            DESKTOP, "org.freedesktop.portal.Request", "Response", path, None, 0, respond
        )
        try:
            self._bus.call_sync(
                DESKTOP,
                DESKTOP_PATH,
                iface,
                method,
                GLib.Variant(signature, tuple(args)),
                None,
                0,
                CALL_TIMEOUT_MS,
                None,
            )
            timer = GLib.timeout_add(int(timeout * 1000), loop.quit)
            loop.run()
            if not answer:
                raise PortalError(f"the screen-cast portal did not answer {method} in time")
            GLib.source_remove(timer)
        except GLib.Error as exc:
            raise PortalError(f"the screen-cast portal refused {method}: {exc.message}") from exc
        finally:
            self._bus.signal_unsubscribe(subscription)
        code, results = answer[0]
        if code != 0:
            raise PortalError(RESPONSES.get(code, f"the screen-cast portal failed {method}"))
        return results

    def _cursor_modes(self) -> int:
        try:
            reply = self._bus.call_sync(
                DESKTOP,
                DESKTOP_PATH,
                "org.freedesktop.DBus.Properties",
                "Get",
                GLib.Variant("(ss)", (SCREENCAST, "AvailableCursorModes")),
                None,
                0,
                CALL_TIMEOUT_MS,
                None,
            )
        except GLib.Error:
            return 0
        return int(reply.unpack()[0])

    def start(self, *, control: bool = False, every_monitor: bool = False) -> Cast:
        """One monitor, chosen by the user in the desktop's dialog; its PipeWire stream.

        ``control``: a RemoteDesktop session (keyboard and pointer) with the screen
        as its source; the dialog then also asks whether to allow remote interaction.
        ``every_monitor``: the dialog lets the user pick several monitors (the
        portal's ``multiple``); one stream each, as many as the user shared."""
        token = GLib.Variant("s", "allowhelpsession")
        owner = REMOTE_DESKTOP if control else SCREENCAST
        created = self._request(
            "CreateSession", "(a{sv})", [{"session_handle_token": token}], ANSWER_TIMEOUT, owner
        )
        self._session = str(created["session_handle"])
        if control:
            devices = {"types": GLib.Variant("u", KEYBOARD | POINTER)}
            self._request(
                "SelectDevices", "(oa{sv})", [self._session, devices], ANSWER_TIMEOUT, owner
            )
        sources: dict[str, Any] = {
            "types": GLib.Variant("u", MONITOR),
            "multiple": GLib.Variant("b", every_monitor),
        }
        if self._cursor_modes() & CURSOR_EMBEDDED:
            sources["cursor_mode"] = GLib.Variant("u", CURSOR_EMBEDDED)
        self._request("SelectSources", "(oa{sv})", [self._session, sources], ANSWER_TIMEOUT)
        started = self._request(
            "Start", "(osa{sv})", [self._session, "", {}], DIALOG_TIMEOUT, owner
        )
        if control and int(started.get("devices", 0)) & (KEYBOARD | POINTER) != KEYBOARD | POINTER:
            raise PortalError("the user did not allow remote control in the desktop's dialog")
        streams = described(started.get("streams") or [])
        if not streams:
            raise PortalError("the screen-cast portal gave no stream")
        return Cast(self._pipewire_fd(), streams if every_monitor else streams[:1])

    def _pipewire_fd(self) -> int:
        try:
            reply, fds = self._bus.call_with_unix_fd_list_sync(
                DESKTOP,
                DESKTOP_PATH,
                SCREENCAST,
                "OpenPipeWireRemote",
                GLib.Variant("(oa{sv})", (self._session, {})),
                GLib.VariantType("(h)"),
                0,
                CALL_TIMEOUT_MS,
                None,
                None,
            )
        except GLib.Error as exc:
            raise PortalError(f"no PipeWire stream from the portal: {exc.message}") from exc
        return int(fds.get(reply.unpack()[0]))

    # input (a control session only)

    def _notify(self, method: str, signature: str, *args: Any) -> None:
        try:
            self._bus.call_sync(
                DESKTOP,
                DESKTOP_PATH,
                REMOTE_DESKTOP,
                method,
                GLib.Variant(signature, (self._session, {}, *args)),
                None,
                0,
                CALL_TIMEOUT_MS,
                None,
            )
        except GLib.Error as exc:
            raise PortalError(f"the desktop refused input ({method}): {exc.message}") from exc

    def key(self, keysym: int, down: bool) -> None:
        self._notify("NotifyKeyboardKeysym", "(oa{sv}iu)", keysym, int(down))

    def move(self, node: int, x: int, y: int) -> None:
        self._notify("NotifyPointerMotionAbsolute", "(oa{sv}udd)", node, float(x), float(y))

    def button(self, button: int, down: bool) -> None:
        self._notify("NotifyPointerButton", "(oa{sv}iu)", button, int(down))

    def scroll(self, steps: int) -> None:
        self._notify("NotifyPointerAxisDiscrete", "(oa{sv}ui)", 0, steps)  # 0: vertical

    def close(self) -> None:
        """End the portal session: the desktop stops casting (its indicator goes)."""
        if self._session:
            with contextlib.suppress(GLib.Error):
                self._bus.call_sync(
                    DESKTOP, self._session, SESSION, "Close", None, None, 0, CALL_TIMEOUT_MS, None
                )
            self._session = ""
