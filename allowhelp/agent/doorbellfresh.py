"""The Hello the doorbell sends, kept fresh while the PC idles (standard library only).

The doorbell sends the full agent's last Hello (``hello.json``). The machine
service's says who is signed in, which changes while it idles: a user logs in
(their session helper connects and is parked, ``doorbellpark.py``) or out (the
parked helper hangs up). The broker shows the Hello of the doorbell's stream
(after a wake: the woken tunnel's last one, which is ``hello.json``), so when
what the parked helpers say differs from that, the doorbell rings in again with
a fresh Hello (a new stream replaces the old one at the broker): at most once per
``REDIAL_EVERY``, and only once the helpers have had ``SETTLE`` seconds to come
back after a full agent ended (else the broker would briefly see nobody).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from allowhelp.agent.doorbellkey import saved_hello
from allowhelp.agent.doorbellpark import HelperPark

if TYPE_CHECKING:
    from allowhelp.agent.doorbellseen import SignedIn

SETTLE = 3.0  # after a full agent ended (its helpers reconnect a second later) or a start
REDIAL_EVERY = 3.0  # at most one new stream for a fresh Hello this often
RETRY_AFTER = 30.0  # a fresh Hello that did not get through is tried again after this


class FreshHello:
    def __init__(self, folder: Path, park: HelperPark, *, system: bool) -> None:
        self.folder = folder
        self.park = park
        self.system = system
        self.sent: dict[str, object] | None = None  # the Hello the broker shows, as known
        self.settle_until = time.monotonic() + SETTLE
        self.last_dial = -REDIAL_EVERY
        self._due = True  # once settled: hello.json may name someone gone since
        self._signed_in: SignedIn | None = None

    def wanted(self) -> dict[str, object]:
        """``hello.json``; for the machine service, once settled, with who is signed in
        as its parked helpers say (``doorbellseen.py``)."""
        hello = saved_hello(self.folder)
        if self.system and time.monotonic() >= self.settle_until:
            if self._signed_in is None:  # loads signedin.py: the machine service's only
                from allowhelp.agent.doorbellseen import SignedIn  # noqa: PLC0415

                self._signed_in = SignedIn()
            hello.update(self._signed_in.fields(self.park.helpers.values()))
        return hello

    def dialing(self, hello: dict[str, object]) -> None:
        self.last_dial = time.monotonic()
        self.sent = hello

    def retry(self) -> None:
        """The fresh Hello did not get through: again after ``RETRY_AFTER``."""
        self.last_dial = time.monotonic() + RETRY_AFTER - REDIAL_EVERY
        self._due = True

    def child_ended(self) -> None:
        """The broker now shows the woken tunnel's last Hello, which it saved."""
        self.sent = saved_hello(self.folder)
        self.settle_until = time.monotonic() + SETTLE
        self._due = True

    def redial(self) -> dict[str, object] | None:
        """The fresh Hello to ring in with now, or None (nothing changed, or not yet)."""
        if self.park.changed:
            self.park.changed = False
            self._due = True
        now = time.monotonic()
        if not self._due or now < self.settle_until or now < self.last_dial + REDIAL_EVERY:
            return None
        self._due = False
        hello = self.wanted()
        return hello if hello != self.sent else None
