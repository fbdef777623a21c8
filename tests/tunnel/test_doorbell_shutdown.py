"""A broker that stops ends its doorbell streams: it exits at once, not after a
graceful-shutdown timeout, and the agent sees the stream end (then redials)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bellkit import doorbell, doorbell_client, hello, scripted_agent

from harness import staffed_broker


async def test_stopping_the_broker_ends_the_stream(tmp_path: Path) -> None:
    with staffed_broker(tmp_path) as fleet:
        broker = fleet.brokers[0]
        agent = fleet.agent()
        assert agent.enroll(broker.token()).returncode == 0
        async with scripted_agent(agent, hello(agent.agent_id, "need")) as heard:
            token = str((await heard.first("doorbell.key"))["token"])
        async with (
            doorbell_client(broker) as client,
            doorbell(client, agent.agent_id, token, hello(agent.agent_id, "have")) as bell,
        ):
            assert await bell.line() == {"type": "beat"}
            stopping = asyncio.create_task(asyncio.to_thread(broker.stop))
            assert await bell.ended(timeout=15)
            assert await stopping == 0
        assert token not in broker.log.read_text()
