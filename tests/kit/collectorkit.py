"""A syslog collector on UDP 127.0.0.1 that writes one line per datagram, as rsyslog would."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from syslogkit import parse_5424


class Collector:
    """Received lines in ``lines``, and in ``path`` behind a collector's own prefix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.path.open("a") as out:
            while not self._stop.is_set():
                try:
                    line = self.sock.recv(65536).decode()
                except TimeoutError:
                    continue
                out.write(f"Dec  1 12:00:00 collector {line}\n")
                out.flush()
                self.lines.append(line)

    def anchors(self) -> list[dict[str, Any]]:
        return [parse_5424(line) for line in self.lines if " AH1905 " in line]

    def records(self) -> list[dict[str, Any]]:
        """Every record's line (not the anchors'), parsed."""
        return [parse_5424(line) for line in list(self.lines) if " AH1905 " not in line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
