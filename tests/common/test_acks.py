"""Acknowledgements sent together (libs/common/acks.py): the bookkeeping on its own, then
the consumer on the real RabbitMQ and PostgreSQL, where a run of finished messages is
settled by one frame and a message still at work is never settled by another's."""

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from libs.common.acks import ChannelAcks
from libs.common.bus import Binding, Bus
from libs.common.db import Conn, create_pool, migrate
from libs.common.events import Envelope, EventData, UserDisabled, make_event
from tests.support.env import TestEnv


def _acks() -> ChannelAcks:
    return ChannelAcks(channel=None)  # type: ignore[arg-type]  # frames() never sends


def test_a_run_from_the_first_delivery_is_one_frame_naming_its_last_tag() -> None:
    acks = _acks()
    assert acks.frames([3, 1, 2]) == [(3, True)]
    assert acks.through == 3
    assert acks.frames([4]) == [(4, True)]


def test_a_finished_tag_behind_one_still_at_work_goes_alone() -> None:
    acks = _acks()
    # 1 is still at work: 2 and 3 are acknowledged alone, never by a frame that covers 1.
    assert acks.frames([2, 3]) == [(2, False), (3, False)]
    assert acks.through == 0
    # 1 finishes: the frame names 1 (2 and 3 are settled already), and the run passes them.
    assert acks.frames([1]) == [(1, True)]
    assert acks.through == 3
    assert acks.frames([5, 4]) == [(5, True)]


def test_a_rejected_or_requeued_tag_lets_the_run_pass_but_is_never_named() -> None:
    acks = _acks()
    acks.settled(2)  # dead-lettered
    assert acks.frames([1, 3]) == [(3, True)]
    assert acks.through == 3
    acks.settled(5)
    # The run ends on a settled tag: the frame names the last one acknowledged here.
    assert acks.frames([4]) == [(4, True)]
    assert acks.through == 5


def test_a_tag_that_never_finishes_leaves_the_others_acknowledged_one_by_one() -> None:
    acks = _acks()
    frames = [acks.frames([tag]) for tag in range(2, 6)]
    assert frames == [[(tag, False)] for tag in range(2, 6)]
    assert acks.through == 0


@pytest.fixture
async def effects_pool(test_env: TestEnv, tmp_path: Path) -> asyncpg.Pool:
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    pool = await create_pool(test_env.database_url, schema)
    await pool.execute("CREATE TABLE effects (user_id uuid NOT NULL)")
    yield pool
    await pool.close()


async def _consumer(
    test_env: TestEnv, pool: asyncpg.Pool, name: str, release: asyncio.Event, **options: Any
) -> tuple[Bus, Bus, Any, list[Envelope]]:
    """A consumer ``name`` whose first event waits for ``release``, identity to publish,
    and twelve events published one after the other behind the first."""
    first: list[uuid.UUID] = []

    async def handler(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, UserDisabled)
        await conn.execute("INSERT INTO effects VALUES ($1)", data.user_id)
        if not first:
            first.append(data.user_id)
            await release.wait()

    bus = Bus(test_env.amqp_url, test_env.bus_prefix, name)
    await bus.connect()
    owner = Bus(test_env.amqp_url_as("identity"), test_env.bus_prefix, "identity")
    await owner.connect()
    consumer = await bus.consume(
        pool,
        [Binding("events", "identity.user.disabled")],
        {"identity.user.disabled": handler},
        **options,
    )
    envelopes = [
        make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
        for _ in range(12)
    ]
    await owner.publish_envelope(envelopes[0])
    await asyncio.sleep(0.3)
    for envelope in envelopes[1:]:
        await owner.publish_envelope(envelope)
    return bus, owner, consumer, envelopes


async def _effects(pool: asyncpg.Pool, count: int) -> int:
    for _ in range(200):
        found = int(await pool.fetchval("SELECT count(*) FROM effects"))
        if found >= count:
            return found
        await asyncio.sleep(0.05)
    return found


async def _left_in_queue(test_env: TestEnv, name: str) -> int:
    """How many messages the queue delivers to a fresh consumer (each acked)."""
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(f"{test_env.bus_prefix}.{name}", passive=True)
    count = 0
    while (message := await queue.get(fail=False, timeout=5)) is not None:
        await message.ack()
        count += 1
    await connection.close()
    return count


@pytest.mark.integration
async def test_messages_finished_together_are_settled_by_one_frame(
    test_env: TestEnv, effects_pool: asyncpg.Pool
) -> None:
    release = asyncio.Event()
    bus, owner, consumer, envelopes = await _consumer(test_env, effects_pool, "acks1", release)
    await asyncio.sleep(1.0)  # the eleven behind the first are delivered and wait for it
    release.set()
    assert await _effects(effects_pool, len(envelopes)) == len(envelopes)
    for _ in range(100):
        if consumer.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    [acks] = consumer.acks._channels.values()
    # The first alone, then the eleven its transaction held back, in one frame.
    assert acks.through == len(envelopes)
    assert acks.frames_sent == 2
    await consumer.stop()
    await bus.close()
    # Nothing comes back: every one was settled.
    assert await _left_in_queue(test_env, "acks1") == 0
    await owner.close()


@pytest.mark.integration
async def test_a_message_still_at_work_is_not_settled_by_those_finished_after_it(
    test_env: TestEnv, effects_pool: asyncpg.Pool
) -> None:
    release = asyncio.Event()
    # Applied alone and concurrently: the eleven finish while the first is still held.
    bus, owner, consumer, envelopes = await _consumer(
        test_env, effects_pool, "acks2", release, alone=frozenset({"identity.user.disabled"})
    )
    # The first's effect waits in its open transaction.
    assert await _effects(effects_pool, len(envelopes) - 1) == len(envelopes) - 1
    for _ in range(100):
        if consumer.in_flight == 1:
            break
        await asyncio.sleep(0.05)
    [acks] = consumer.acks._channels.values()
    assert acks.through == 0 and acks.frames_sent == len(envelopes) - 1
    # The service dies with the first still at work: the broker gives back that one only.
    await bus.close()
    assert await _left_in_queue(test_env, "acks2") == 1
    release.set()
    await owner.close()
