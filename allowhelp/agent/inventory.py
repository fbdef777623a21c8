"""What the machine service reports of its PC on each connect: OS, kernel, disk,
memory, last boot, installed packages (``dpkg-query -W``), bounded.

Cheap on purpose: a few files under ``/proc``, one ``statvfs`` and one
``dpkg-query`` (at most ``PACKAGES_TIMEOUT`` seconds and ``MAX_PACKAGE_TEXT``
characters: what does not fit is counted, not sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from allowhelp.agent.hello import os_description
from allowhelp.protocol.control import InventoryReport, Message

log = logging.getLogger(__name__)

PART_TEXT = 11000
MAX_PARTS = 32
MAX_PACKAGE_TEXT = PART_TEXT * MAX_PARTS
PACKAGES_TIMEOUT = 30.0
Sender = Callable[[Message], None]


def inventory_parts(packages: list[str], **fields: float | str) -> list[InventoryReport]:
    """The reports for one inventory: the package lines cut into parts."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in packages:
        if size + len(line) + 1 > PART_TEXT and current:
            chunks.append("\n".join(current))
            current, size = [], 0
        if len(chunks) == MAX_PARTS:
            break
        current.append(line[:200])
        size += len(line[:200]) + 1
    if current and len(chunks) < MAX_PARTS:
        chunks.append("\n".join(current))
    chunks = chunks or [""]
    return [
        InventoryReport(
            os=str(fields["os"]),
            kernel=str(fields["kernel"]),
            disk_total=float(fields["disk_total"]),
            disk_free=float(fields["disk_free"]),
            memory_total=float(fields["memory_total"]),
            last_boot=float(fields["last_boot"]),
            package_count=len(packages),
            packages=chunk,
            part=number,
            parts=len(chunks),
        )
        for number, chunk in enumerate(chunks)
    ]


async def collect() -> list[InventoryReport]:
    disk = shutil.disk_usage("/")
    return inventory_parts(
        await installed_packages(),
        os=os_description()[:200],
        kernel=os.uname().release[:200],
        disk_total=disk.total,
        disk_free=disk.free,
        memory_total=_memory_total(),
        last_boot=_boot_time(),
    )


async def installed_packages() -> list[str]:
    query = shutil.which("dpkg-query")
    if query is None:
        return []
    try:
        proc = await asyncio.create_subprocess_exec(
            query,
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Package} ${Version}\\n",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.warning("no package list: %s", exc)
        return []
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PACKAGES_TIMEOUT)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return []
    lines = []
    for line in out.decode("utf-8", errors="replace").splitlines():
        status, _, rest = line.partition(" ")
        if status.startswith("ii") and rest.strip():
            lines.append(rest.strip())
    return lines


def _memory_total() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    return 0.0


def _boot_time() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


class InventoryReporter:
    """Sends the inventory once per connection, after the ``hello``."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def attach(self, send: Sender | None) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if send is not None:
            self._task = asyncio.get_running_loop().create_task(self._report(send))

    async def _report(self, send: Sender) -> None:
        try:
            reports = await collect()
        except OSError as exc:
            log.warning("no inventory this time: %s", exc)
            return
        for report in reports:
            send(report)
