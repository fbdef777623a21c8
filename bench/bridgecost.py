"""What the socketpair in ``allowhelp/wsbridge.py`` costs by itself, per MB and direction.

    .venv/bin/python -m bench.bridgecost [MIB]

The HTTPS route's extra work is TLS, WebSocket framing and the socketpair
between the WebSocket and asyncssh. Only the last would go with a custom
asyncio transport fed straight from the WebSocket, so this measures it alone,
in one process on the event loop the daemons use (uvloop when installed): the
bridge's side writes 128 KiB messages with ``loop.sock_sendall`` into one end
(as ``bridge``'s inbound task does), asyncssh's side is a protocol on the other
end through ``loop.create_connection(sock=...)`` (as the broker's listener and
``connect_reverse(sock=...)`` have it). CPU ms per MB = process CPU / MB moved.
Each direction of a tunnel pays this once at each end.
"""

from __future__ import annotations

import asyncio
import sys
import time

from allowhelp.wsbridge import socket_pair

MESSAGE = 128 * 1024


class Sink(asyncio.Protocol):
    def __init__(self, want: int, done: asyncio.Future[None]) -> None:
        self.left = want
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


async def copy(total: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to move ``total`` bytes through a socketpair."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket_pair()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: Sink(total, done), sock=theirs)
    block = b"x" * MESSAGE
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(total // MESSAGE):
        await loop.sock_sendall(ours, block)
    await done
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    transport.close()
    ours.close()
    return cpu, wall


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401, PLC0415 - the daemons' loop when installed
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_once(total: int) -> tuple[float, float]:
    if loop_name() == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.run(copy(total))
    return asyncio.run(copy(total))


def main(argv: list[str]) -> int:
    mib = int(argv[0]) if argv else 1024
    name = loop_name()
    runs = [run_once(mib * 1024 * 1024) for _ in range(5)]
    cpu_ms_per_mb = sorted(c / (mib * 1.048576) * 1000 for c, _ in runs)[2]
    mb_s = sorted(mib * 1.048576 / w for _, w in runs)[2]
    print(
        f"socketpair bridge alone ({name}, {MESSAGE // 1024} KiB messages, {mib} MiB x 5,"
        f" medians): {cpu_ms_per_mb:.3f} CPU ms/MB, {mb_s:,.0f} MB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
