"""Each run drops the queues its tests declared under its bus prefix
(tests/support/env.py ``drop_bus``): a queue left behind is a durable quorum queue on the
shared broker for good, one more with every run."""

from __future__ import annotations

import re
from pathlib import Path

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity

from tests.support.env import PROBE_QUEUES, new_test_env, provisioned

TESTS = Path(__file__).resolve().parents[1]
PROBE = re.compile(r"\"(probe\d+)\"")


def test_every_probe_queue_a_test_declares_is_one_drop_bus_drops() -> None:
    declared = {name for path in TESTS.rglob("*.py") for name in PROBE.findall(path.read_text())}
    assert declared, "no probe queue found: the pattern no longer matches the tests"
    assert declared <= set(PROBE_QUEUES), sorted(declared - set(PROBE_QUEUES))


@pytest.mark.integration
async def test_a_run_leaves_none_of_its_probe_queues_behind() -> None:
    # tests/common/test_bus.py consumes on probe10 and probe12, with their dead letters.
    names = ("probe10", "probe10.dead", "probe12", "probe12.dead")
    async with provisioned(new_test_env()) as env:
        connection = await aio_pika.connect(env.amqp_url)
        try:
            channel = await connection.channel()
            for name in names:
                await channel.declare_queue(
                    f"{env.bus_prefix}.{name}", durable=True, arguments={"x-queue-type": "quorum"}
                )
        finally:
            await connection.close()
    connection = await aio_pika.connect(env.amqp_url)
    try:
        left = []
        for name in names:
            channel = await connection.channel()
            try:
                await channel.declare_queue(f"{env.bus_prefix}.{name}", passive=True)
                left.append(name)
                await channel.queue_delete(f"{env.bus_prefix}.{name}")  # not for the next run
            except ChannelNotFoundEntity:
                pass
    finally:
        await connection.close()
    assert left == [], left
