"""``--linger``'s clock (agent/linger.py): pure logic, driven by plain callables."""

from __future__ import annotations

import asyncio

import pytest

from allowhelp.agent.linger import Linger


def run(linger: Linger, until: float) -> tuple[bool, float]:
    """(whether it stopped the agent, after how long), watched for at most ``until`` s."""

    async def watch() -> tuple[bool, float]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(linger.run(stop))
        try:
            await asyncio.wait_for(stop.wait(), until)
        except TimeoutError:
            return False, loop.time() - started
        finally:
            task.cancel()
        return True, loop.time() - started

    return asyncio.run(watch())


def test_an_idle_connected_agent_ends_after_linger() -> None:
    stopped, after = run(Linger(0.4, lambda: False, lambda: True), 5)
    assert stopped and 0.4 <= after < 2


def test_it_stays_while_needed_and_counts_from_the_last_need() -> None:
    looks: list[float] = []

    def needed() -> bool:
        looks.append(0)
        return len(looks) < 6  # needed for the first six looks (0.1 s apart)

    stopped, after = run(Linger(0.4, needed, lambda: True), 5)
    assert stopped and after >= 0.6 + 0.4 - 0.15


def test_it_waits_for_its_first_tunnel_but_not_forever() -> None:
    stopped, _ = run(Linger(0.2, lambda: False, lambda: False, first_connect=60), 1.0)
    assert not stopped  # never connected yet: the request it was woken for is on its way
    stopped, after = run(Linger(0.2, lambda: False, lambda: False, first_connect=0.5), 5)
    assert stopped and after >= 0.5


def test_a_linger_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Linger(0, lambda: False, lambda: True)
