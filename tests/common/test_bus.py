"""The outbox relay and the inbox consumer on the real PostgreSQL and RabbitMQ."""

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
import structlog.testing
from prometheus_client import REGISTRY

import libs.common.bus as bus_module
from libs.common.actor import Actor
from libs.common.bus import Binding, Bus, Together, arrival_context, stale
from libs.common.context import current_correlation_id
from libs.common.db import Conn, create_pool, migrate
from libs.common.events import (
    Envelope,
    Event,
    EventData,
    InvitationRequested,
    MailJobs,
    MailRequested,
    UserDisabled,
    UserEnabled,
    make_event,
)
from libs.common.metrics import OUTBOX_BACKLOG
from libs.common.outbox import OutboxRelay, append, change_and_append
from libs.common.web import prune_inbox
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration


class ProbePool:
    """A pool on a throwaway schema that has only the common outbox and inbox tables."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)


@pytest.fixture
async def probe_schema(test_env: TestEnv, tmp_path: Path) -> ProbePool:
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    pool = await create_pool(test_env.database_url, schema)
    yield ProbePool(pool, schema)
    await pool.close()


async def _collect(bus: Bus, channel: aio_pika.abc.AbstractChannel, key: str) -> asyncio.Queue:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(bus.exchange_name("events"), routing_key=key)
    got: asyncio.Queue = asyncio.Queue()

    async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            await got.put(message)

    await queue.consume(on)
    return got


async def test_relay_publishes_committed_events_with_contract_properties(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe0")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    got = await _collect(bus, channel, "identity.user.disabled")
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    envelope = make_event(
        "identity.user.disabled",
        UserDisabled(user_id=uuid.uuid4()),
        source="test",
        correlation_id="corr-1",
    )
    async with probe_schema.acquire() as conn, conn.transaction():
        await append(conn, envelope)
    # A rolled-back change publishes nothing.
    with pytest.raises(RuntimeError):
        async with probe_schema.acquire() as conn, conn.transaction():
            await append(
                conn,
                make_event(
                    "identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test"
                ),
            )
            raise RuntimeError("rollback")
    assert await relay.flush_once() == 1
    assert await relay.flush_once() == 0
    message = await asyncio.wait_for(got.get(), 10)
    assert message.message_id == str(envelope.id)
    assert message.correlation_id == "corr-1"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert orjson.loads(message.body)["type"] == "identity.user.disabled"
    assert got.empty()
    assert await relay.backlog() == 0
    await connection.close()
    await bus.close()


async def test_events_appended_together_are_published_in_the_order_given(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe2")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    got = await _collect(bus, channel, "identity.user.disabled")
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    batches = [
        [
            make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
            for _ in range(size)
        ]
        for size in (3, 1, 5)
    ]
    for batch in batches:
        async with probe_schema.acquire() as conn, conn.transaction():
            await append(conn, *batch)
    expected = [str(e.id) for batch in batches for e in batch]
    stored = await probe_schema.pool.fetch("SELECT id FROM outbox ORDER BY seq")
    assert [str(row["id"]) for row in stored] == expected
    assert await relay.flush_once() == len(expected)
    published = [(await asyncio.wait_for(got.get(), 10)).message_id for _ in expected]
    assert published == expected
    await connection.close()
    await bus.close()


async def test_a_stray_cancellation_of_a_publish_leaves_the_relay_running(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """A CancelledError from under a publish that was not the relay's own cancellation (a
    library cancelling what it waited on) ended the relay's task: nothing was published
    again until a restart."""
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe3")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    got = await _collect(bus, channel, "identity.user.disabled")
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    publish, calls = bus.publish, 0

    async def cancelled_once(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        await publish(*args, **kwargs)

    bus.publish = cancelled_once  # type: ignore[method-assign]
    running = asyncio.create_task(relay.run())
    try:
        envelope = make_event(
            "identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test"
        )
        async with probe_schema.acquire() as conn, conn.transaction():
            await append(conn, envelope)
        message = await asyncio.wait_for(got.get(), 15)
        assert message.message_id == str(envelope.id) and calls == 2
        assert not running.done()
    finally:
        await relay.drain(timeout=1.0)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await connection.close()
        await bus.close()


async def test_a_change_and_its_event_are_written_together_or_not_at_all(
    probe_schema: ProbePool,
) -> None:
    pool = probe_schema.pool
    await pool.execute("CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL)")
    await pool.execute("INSERT INTO jobs VALUES (1, 'sending')")
    change = "UPDATE jobs SET state = 'sent' WHERE id = $1 AND state = $2 RETURNING 1"

    def event() -> Envelope:
        return make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")

    first = event()
    async with pool.acquire() as conn:
        assert await change_and_append(conn, change, (1, "sending"), first) is True
        # The guard no longer matches: no change, and no event either.
        assert await change_and_append(conn, change, (1, "sending"), event()) is False
        # The event can't be written (its id is taken): the change is undone with it.
        await conn.execute("UPDATE jobs SET state = 'sending' WHERE id = 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await change_and_append(conn, change, (1, "sending"), first)
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = 1") == "sending"
    assert [r["id"] for r in await pool.fetch("SELECT id FROM outbox")] == [first.id]


async def test_relay_keeps_rows_while_broker_is_unreachable(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe1")
    await bus.connect()
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    async with probe_schema.acquire() as conn, conn.transaction():
        await append(
            conn,
            make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test"),
        )
    await bus.close()  # the broker is "gone" for this relay
    with pytest.raises(Exception):
        await relay.flush_once()
    assert await relay.backlog() == 1
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe1")
    await bus.connect()
    relay.bus = bus
    assert await relay.flush_once() == 1
    assert await relay.backlog() == 0
    await bus.close()


async def _consume(
    test_env: TestEnv,
    probe_schema: ProbePool,
    name: str,
    handlers: dict[str, Any],
    alone: frozenset[str] = frozenset(),
) -> tuple[Bus, Bus, Any]:
    """A consumer ``name`` of these identity.* events, each with its handler, and identity
    to publish them: what the consumer acts on must come from the owner of the event type."""
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, name)
    await bus.connect()
    owner = Bus(test_env.amqp_url_as("identity"), test_env.bus_prefix, "identity")
    await owner.connect()
    consumer = await bus.consume(
        probe_schema.pool,
        [Binding("events", event_type) for event_type in handlers],
        handlers,
        alone=alone,
    )
    return bus, owner, consumer


async def _consume_user_disabled(
    test_env: TestEnv,
    probe_schema: ProbePool,
    name: str,
    handler: Any,
    alone: frozenset[str] = frozenset(),
) -> tuple[Bus, Bus, Any]:
    """A consumer ``name`` of identity.user.disabled."""
    return await _consume(test_env, probe_schema, name, {"identity.user.disabled": handler}, alone)


async def test_consumer_applies_an_event_once_and_dead_letters_poison(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    await probe_schema.execute("CREATE TABLE effects (user_id uuid NOT NULL)")
    applied = asyncio.Event()

    async def handler(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, UserDisabled)
        await conn.execute("INSERT INTO effects VALUES ($1)", data.user_id)
        applied.set()

    bus, owner, consumer = await _consume_user_disabled(test_env, probe_schema, "probe2", handler)
    envelope = make_event(
        "identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test"
    )
    poison = b"{not json"
    await owner.publish(
        "events",
        "identity.user.disabled",
        poison,
        message_id="poison",
        correlation_id=None,
        type="identity.user.disabled",
    )
    for _ in range(2):  # the same event delivered twice
        await owner.publish_envelope(envelope)
    await asyncio.wait_for(applied.wait(), 10)
    for _ in range(50):
        if consumer.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert await probe_schema.fetchval("SELECT count(*) FROM effects") == 1
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    dead = await channel.declare_queue(f"{test_env.bus_prefix}.probe2.dead", passive=True)
    message = await dead.get(timeout=5)
    assert message is not None and message.body == poison
    await message.ack()
    await connection.close()
    await consumer.stop()
    await owner.close()
    await bus.close()


async def test_a_message_a_check_fails_on_unexpectedly_is_dead_lettered_not_held(
    test_env: TestEnv, probe_schema: ProbePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a check before the handler raises (as the NUL walk's RecursionError did on
    a request nested 1,000 deep) dead-letters that message with its reason. Before, the
    exception left the consumer and the message stayed unacknowledged for good, holding
    one of the consumer's prefetch slots: enough such messages and it took no other."""
    await probe_schema.execute("CREATE TABLE effects (user_id uuid NOT NULL)")
    applied = asyncio.Event()
    surprising = uuid.uuid4()
    real_parse_data = bus_module.parse_data

    def parse_data(envelope: Envelope) -> EventData:
        if envelope.id == surprising:
            raise RuntimeError("a check met what it never expected")
        return real_parse_data(envelope)

    monkeypatch.setattr(bus_module, "parse_data", parse_data)

    async def handler(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, UserDisabled)
        await conn.execute("INSERT INTO effects VALUES ($1)", data.user_id)
        applied.set()

    bus, owner, consumer = await _consume_user_disabled(test_env, probe_schema, "probe13", handler)
    odd = make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test")
    odd = odd.model_copy(update={"id": surprising})
    await owner.publish_envelope(odd)
    await owner.publish_envelope(
        make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="test")
    )
    await asyncio.wait_for(applied.wait(), 10)
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel()
        dead = await channel.declare_queue(f"{test_env.bus_prefix}.probe13.dead", passive=True)
        message = None
        for _ in range(100):
            message = await dead.get(fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None, "the message was held, not dead-lettered"
        assert message.message_id == str(surprising)
        await message.ack()
    finally:
        await connection.close()
    assert consumer.in_flight == 0
    await _close(consumer, owner, bus)


async def _consume_held(
    test_env: TestEnv,
    probe_schema: ProbePool,
    name: str,
    fail_for: set[uuid.UUID],
    alone: frozenset[str] = frozenset(),
) -> tuple[Bus, Bus, Any, list[Envelope], asyncio.Event]:
    """A consumer whose first event is held in its transaction until ``release`` is set,
    so the events published meanwhile arrive together; ``fail_for`` users' events raise."""
    await probe_schema.execute(
        "CREATE TABLE effects (user_id uuid NOT NULL, tx bigint NOT NULL, correlation text)"
    )
    release = asyncio.Event()
    first: list[uuid.UUID] = []

    async def handler(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, UserDisabled)
        await conn.execute(
            "INSERT INTO effects VALUES ($1, txid_current(), $2)",
            data.user_id,
            current_correlation_id(),
        )
        if not first:
            first.append(data.user_id)
            await release.wait()
        if data.user_id in fail_for:
            raise ValueError("this one can't be applied")

    bus, owner, consumer = await _consume_user_disabled(
        test_env, probe_schema, name, handler, alone
    )
    return bus, owner, consumer, _disabled(12), release


def _disabled(count: int) -> list[Envelope]:
    """identity.user.disabled events, each with its own correlation id (corr-0, corr-1 …)."""
    return [
        make_event(
            "identity.user.disabled",
            UserDisabled(user_id=uuid.uuid4()),
            source="test",
            correlation_id=f"corr-{n}",
        )
        for n in range(count)
    ]


async def _publish_behind_the_first(owner: Bus, envelopes: list[Envelope], *more: Envelope) -> None:
    """The first event, and once its handler holds it in its transaction, the rest."""
    await owner.publish_envelope(envelopes[0])
    await asyncio.sleep(0.3)
    for envelope in (*envelopes[1:], *more):
        await owner.publish_envelope(envelope)
    await asyncio.sleep(1.0)  # all of them delivered, queued behind the first


async def _wait_for_effects(probe_schema: ProbePool, count: int) -> list[asyncpg.Record]:
    for _ in range(200):
        rows = await probe_schema.fetch("SELECT * FROM effects")
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} effects, got {len(rows)}")


async def test_events_arriving_together_share_one_transaction_and_each_applies_once(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bus, owner, consumer, envelopes, release = await _consume_held(
        test_env, probe_schema, "probe5", set()
    )
    await _publish_behind_the_first(owner, envelopes, envelopes[5])  # one delivered twice
    release.set()
    rows = await _wait_for_effects(probe_schema, len(envelopes))
    await asyncio.sleep(0.3)
    rows = await probe_schema.fetch("SELECT * FROM effects")
    by_user = {row["user_id"]: row for row in rows}
    assert len(rows) == len(by_user) == len(envelopes), "each applied once"
    # Each handler ran in its own message's context, though the transaction was shared.
    for envelope in envelopes:
        assert (
            by_user[uuid.UUID(envelope.data["user_id"])]["correlation"] == envelope.correlation_id
        )
    # The first alone; the eleven that arrived meanwhile in one transaction.
    assert len({row["tx"] for row in rows}) == 2
    assert await probe_schema.fetchval("SELECT count(*) FROM inbox") == len(envelopes)
    await _close(consumer, owner, bus)


async def test_an_event_that_fails_in_a_shared_transaction_holds_back_no_other(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bad = uuid.uuid4()
    bus, owner, consumer, envelopes, release = await _consume_held(
        test_env, probe_schema, "probe6", {bad}
    )
    envelopes[6] = make_event("identity.user.disabled", UserDisabled(user_id=bad), source="t")
    await _publish_behind_the_first(owner, envelopes)
    release.set()
    rows = await _wait_for_effects(probe_schema, len(envelopes) - 1)
    await asyncio.sleep(0.5)
    rows = await probe_schema.fetch("SELECT * FROM effects")
    # Every good event applied once; the bad one's effect and inbox row rolled back, and
    # it goes on being retried (and then dead-lettered) on its own.
    assert sorted(str(row["user_id"]) for row in rows) == sorted(
        e.data["user_id"] for e in envelopes if e.data["user_id"] != str(bad)
    )
    inbox = {row["event_id"] for row in await probe_schema.fetch("SELECT event_id FROM inbox")}
    assert inbox == {e.id for e in envelopes if e.data["user_id"] != str(bad)}
    await _close(consumer, owner, bus)


async def test_events_that_wait_on_other_services_are_applied_alone_and_concurrently(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bus, owner, consumer, envelopes, release = await _consume_held(
        test_env, probe_schema, "probe7", set(), alone=frozenset({"identity.user.disabled"})
    )
    await _publish_behind_the_first(owner, envelopes)
    # While the first is held, the others are applied and committed, each on its own.
    rows = await _wait_for_effects(probe_schema, len(envelopes) - 1)
    assert str(envelopes[0].data["user_id"]) not in {str(row["user_id"]) for row in rows}
    release.set()
    rows = await _wait_for_effects(probe_schema, len(envelopes))
    assert len({row["tx"] for row in rows}) == len(envelopes)
    await _close(consumer, owner, bus)


async def test_a_run_of_events_for_one_together_handler_is_applied_in_one_call_in_order(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """Events of a Together handler's types that share a transaction come in one call per
    run; another handler's event in between ends the run, so the order holds."""
    await probe_schema.execute(
        "CREATE TABLE effects (seq serial, user_id uuid NOT NULL, call int NOT NULL,"
        " correlation text)"
    )
    release = asyncio.Event()
    calls: list[int] = []

    async def many(conn: Conn, events: Sequence[Event]) -> None:
        calls.append(len(events))
        await conn.execute(
            "INSERT INTO effects (user_id, call, correlation) SELECT unnest($1::uuid[]), $2, $3",
            [data.user_id for _, data in events],  # type: ignore[attr-defined]
            len(calls),
            current_correlation_id(),
        )
        if len(calls) == 1:
            await release.wait()

    async def one(conn: Conn, envelope: Envelope, data: EventData) -> None:
        calls.append(0)
        await conn.execute(
            "INSERT INTO effects (user_id, call) VALUES ($1, $2)", data.user_id, len(calls)
        )  # type: ignore[attr-defined]

    bus, owner, consumer = await _consume(
        test_env,
        probe_schema,
        "probe8",
        {"identity.user.disabled": Together(many), "identity.user.enabled": one},
    )
    disabled = _disabled(9)
    enabled = make_event("identity.user.enabled", UserEnabled(user_id=uuid.uuid4()), source="t")
    order = [*disabled[:5], enabled, *disabled[5:]]
    await _publish_behind_the_first(owner, order)
    release.set()
    await _wait_for_effects(probe_schema, len(order))
    rows = await probe_schema.fetch("SELECT * FROM effects ORDER BY seq")
    assert [str(row["user_id"]) for row in rows] == [e.data["user_id"] for e in order]
    # The first alone (held), then the four behind it, the one handler, the last four.
    assert calls == [1, 4, 0, 4]
    # A run is called in its first event's context.
    assert [row["correlation"] for row in rows if row["call"] == 2] == ["corr-1"] * 4
    await _close(consumer, owner, bus)


async def test_a_together_handler_that_fails_is_called_again_for_each_event_alone(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    bad = uuid.uuid4()
    await probe_schema.execute("CREATE TABLE effects (user_id uuid NOT NULL, call int NOT NULL)")
    release = asyncio.Event()
    calls: list[int] = []

    async def many(conn: Conn, events: Sequence[Event]) -> None:
        calls.append(len(events))
        users = [data.user_id for _, data in events]  # type: ignore[attr-defined]
        await conn.execute("INSERT INTO effects SELECT unnest($1::uuid[]), $2", users, len(calls))
        if len(calls) == 1:
            await release.wait()
        if bad in users:
            raise ValueError("this one can't be applied")

    bus, owner, consumer = await _consume_user_disabled(
        test_env, probe_schema, "probe9", Together(many)
    )
    envelopes = [
        make_event("identity.user.disabled", UserDisabled(user_id=user), source="t")
        for user in [uuid.uuid4(), uuid.uuid4(), bad, uuid.uuid4()]
    ]
    await _publish_behind_the_first(owner, envelopes)
    release.set()
    await _wait_for_effects(probe_schema, len(envelopes) - 1)
    await asyncio.sleep(0.5)
    rows = await probe_schema.fetch("SELECT * FROM effects")
    assert sorted(str(row["user_id"]) for row in rows) == sorted(
        e.data["user_id"] for e in envelopes if e.data["user_id"] != str(bad)
    )
    # The three behind the first failed together, then went one by one.
    assert calls[:5] == [1, 3, 1, 1, 1]
    await _close(consumer, owner, bus)


async def test_events_a_together_handler_does_not_want_are_acknowledged_without_a_transaction(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """``wants`` says from the envelope alone which events the handler acts on: the
    others are acknowledged at once, with no inbox row and no call."""
    await probe_schema.execute("CREATE TABLE effects (user_id uuid NOT NULL)")
    called: list[int] = []

    async def many(conn: Conn, events: Sequence[Event]) -> None:
        called.append(len(events))
        users = [data.user_id for _, data in events]  # type: ignore[attr-defined]
        await conn.execute("INSERT INTO effects SELECT unnest($1::uuid[])", users)

    bus, owner, consumer = await _consume_user_disabled(
        test_env,
        probe_schema,
        "probe12",
        Together(many, wants=lambda envelope: envelope.actor is not None),
    )
    staff = Actor(type="user", id=str(uuid.uuid4()), name="staff@example.com")
    envelopes = [
        make_event(
            "identity.user.disabled",
            UserDisabled(user_id=uuid.uuid4()),
            source="t",
            actor=staff if n % 2 else None,
        )
        for n in range(6)
    ]
    for envelope in envelopes:
        await owner.publish_envelope(envelope)
    wanted = [e for e in envelopes if e.actor is not None]
    rows = await _wait_for_effects(probe_schema, len(wanted))
    await asyncio.sleep(0.5)
    assert sorted(str(row["user_id"]) for row in rows) == sorted(e.data["user_id"] for e in wanted)
    inbox = {row["event_id"] for row in await probe_schema.fetch("SELECT event_id FROM inbox")}
    assert inbox == {e.id for e in wanted}
    assert sum(called) == len(wanted)
    await _close(consumer, owner, bus)
    # Every one acknowledged, the unwanted too: none went back to the queue.
    connection = await aio_pika.connect(test_env.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.queue_name(), passive=True)
        assert queue.declaration_result.message_count == 0


async def test_a_together_handler_in_alone_runs_apart_and_each_event_keeps_its_context(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """A Together handler named in ``alone`` (it waits on another service) has group
    commits of its own: while its run is held, other events go on; the ones behind it come
    in one call, in one transaction; and each event's own work runs in the context it
    arrived in (``arrival_context``), not the run's."""
    await probe_schema.execute(
        "CREATE TABLE effects (seq serial, user_id uuid NOT NULL, call int NOT NULL,"
        " correlation text, tx bigint NOT NULL)"
    )
    release = asyncio.Event()
    calls: list[int] = []
    insert = (
        "INSERT INTO effects (user_id, call, correlation, tx) VALUES ($1, $2, $3, txid_current())"
    )

    async def many(conn: Conn, events: Sequence[Event]) -> None:
        calls.append(len(events))
        call = len(calls)
        for envelope, data in events:
            assert isinstance(data, UserDisabled)
            correlation = arrival_context(envelope).run(current_correlation_id)
            await conn.execute(insert, data.user_id, call, correlation)
        if call == 1:
            await release.wait()

    async def one(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, UserEnabled)
        await conn.execute(insert, data.user_id, 0, current_correlation_id())

    bus, owner, consumer = await _consume(
        test_env,
        probe_schema,
        "probe10",
        {"identity.user.disabled": Together(many), "identity.user.enabled": one},
        alone=frozenset({"identity.user.disabled"}),
    )
    disabled = _disabled(6)
    enabled = make_event(
        "identity.user.enabled",
        UserEnabled(user_id=uuid.uuid4()),
        source="t",
        correlation_id="corr-enabled",
    )
    await _publish_behind_the_first(owner, disabled, enabled)
    # The first run is held in its transaction: the other event was applied meanwhile.
    (applied,) = await _wait_for_effects(probe_schema, 1)
    assert str(applied["user_id"]) == enabled.data["user_id"]
    release.set()
    await _wait_for_effects(probe_schema, len(disabled) + 1)
    rows = await probe_schema.fetch("SELECT * FROM effects WHERE call > 0 ORDER BY seq")
    assert [str(row["user_id"]) for row in rows] == [e.data["user_id"] for e in disabled]
    assert calls == [1, 5]
    assert len({row["tx"] for row in rows if row["call"] == 2}) == 1
    assert [row["correlation"] for row in rows] == [e.correlation_id for e in disabled]
    await _close(consumer, owner, bus)


async def _close(consumer: Any, owner: Bus, bus: Bus) -> None:
    await consumer.stop()
    await owner.close()
    await bus.close()


async def test_concurrent_migrations_apply_once(test_env: TestEnv, tmp_path: Path) -> None:
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    schema = f"race_{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(
        *(migrate(test_env.database_url, schema, tmp_path) for _ in range(4))
    )
    applied = [name for result in results for name in result]
    assert applied.count("0001_things.sql") == 1
    assert applied.count("0002_more.sql") == 1
    assert await migrate(test_env.database_url, schema, tmp_path) == []


async def _exchanges_nobody_binds(
    env: TestEnv,
) -> tuple[str, aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    """A fresh prefix's exchanges, as on a broker where no queue is bound yet: the prefix,
    and the administrator's connection and channel (_drop_exchanges undoes it)."""
    prefix = f"fresh-{uuid.uuid4().hex[:8]}"
    admin = await aio_pika.connect(env.amqp_url)
    channel = await admin.channel()
    for kind in ("events", "mail"):
        await channel.declare_exchange(f"{prefix}.{kind}", aio_pika.ExchangeType.TOPIC)
    await channel.declare_exchange(f"{prefix}.dlx", aio_pika.ExchangeType.DIRECT)
    return prefix, admin, channel


async def _drop_exchanges(
    admin: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel, prefix: str
) -> None:
    for kind in ("events", "mail", "dlx"):
        await channel.exchange_delete(f"{prefix}.{kind}")
    await admin.close()


def _mail_job(to: str) -> Envelope:
    """An invitation's mail job, sealed context and all, as the invitations service writes it."""
    return make_event(
        "mail.requested",
        MailRequested(
            mail_id=uuid.uuid4(),
            template="invitation",
            to=to,
            ref_type="invitation",
            ref_id=uuid.uuid4(),
            context={"sealed": "x"},
        ),
        source="invitations",
    )


async def test_an_unroutable_mail_job_stays_pending_and_goes_once_the_queue_exists(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """A fresh broker where nobody has bound the mail exchange yet: the broker returns the
    mandatory job, the row stays in the outbox (counted and logged), and it is published
    once a queue is there: never counted as sent and lost."""
    prefix, admin, channel = await _exchanges_nobody_binds(test_env)
    bus = Bus(test_env.amqp_url, prefix, "probe3")
    await bus.connect()
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    job = _mail_job("someone@example.com")
    async with probe_schema.acquire() as conn, conn.transaction():
        await append(conn, job)
    before = _unroutable_count("mail.requested")
    try:
        assert await relay.flush_once() == 0
        row = await probe_schema.pool.fetchrow("SELECT * FROM outbox WHERE id = $1", job.id)
        assert row["published_at"] is None and row["attempts"] == 1
        assert row["next_attempt_at"] is not None
        assert _unroutable_count("mail.requested") == before + 1
        assert await relay.backlog() == 1

        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(f"{prefix}.mail", "mail.requested")
        # Not before its pause is over (no hammering), then once.
        assert await relay.flush_once() == 0
        await probe_schema.pool.execute("UPDATE outbox SET next_attempt_at = now()")
        assert await relay.flush_once() == 1
        message = await queue.get(timeout=5)
        assert message is not None and message.message_id == str(job.id)
        assert await relay.backlog() == 0
    finally:
        await bus.close()
        await _drop_exchanges(admin, channel, prefix)


def _unroutable_count(event_type: str) -> float:
    return (
        REGISTRY.get_sample_value("clientpress_events_unroutable_total", {"type": event_type})
        or 0.0
    )


def _refused_count(event_type: str) -> float:
    return (
        REGISTRY.get_sample_value("clientpress_events_refused_total", {"type": event_type}) or 0.0
    )


async def test_an_event_a_full_queue_refuses_stays_pending_counted_as_refused(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """A queue at its limit (overflow reject-publish) nacks the event: the row stays in
    the outbox for a later try, counted and logged as refused. Before, the nack was taken
    for a return and reported as unroutable ("no queue bound"), pointing the operator at
    the provisioning instead of the full queue."""
    prefix, admin, channel = await _exchanges_nobody_binds(test_env)
    full = await channel.declare_queue(
        exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(f"{prefix}.mail", "mail.requested")
    bus = Bus(test_env.amqp_url, prefix, "probe5")
    await bus.connect()
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    job = _mail_job("full@example.com")
    async with probe_schema.acquire() as conn, conn.transaction():
        await append(conn, job)
    unroutable, refused = _unroutable_count("mail.requested"), _refused_count("mail.requested")
    try:
        assert await relay.flush_once() == 0
        row = await probe_schema.pool.fetchrow("SELECT * FROM outbox WHERE id = $1", job.id)
        assert row["published_at"] is None and row["attempts"] == 1
        assert row["next_attempt_at"] is not None
        assert _unroutable_count("mail.requested") == unroutable
        assert _refused_count("mail.requested") == refused + 1
    finally:
        await bus.close()
        await _drop_exchanges(admin, channel, prefix)


async def test_old_inbox_rows_are_pruned_and_recent_ones_kept(probe_schema: ProbePool) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    await probe_schema.pool.execute(
        "INSERT INTO inbox (event_id, event_type, received_at) VALUES"
        " ($1, 't', now() - interval '9 days'), ($2, 't', now() - interval '6 days')",
        old,
        recent,
    )
    assert await prune_inbox(probe_schema.pool, retention_hours=168) == 1
    left = {r["event_id"] for r in await probe_schema.pool.fetch("SELECT event_id FROM inbox")}
    assert left == {recent}
    assert await prune_inbox(probe_schema.pool, retention_hours=168) == 0


async def test_a_held_relay_waits_and_never_longer_than_its_hold_max(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """While a request holds the relay, nothing is published; on release, at once. A hold
    that lasts past hold_max no longer holds: events are never held back longer."""
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe-held")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    got = await _collect(bus, channel, "identity.user.disabled")
    relay = OutboxRelay(
        probe_schema.pool, bus, probe_schema.schema, test_env.database_url, hold_max=3.0
    )
    running = asyncio.create_task(relay.run())

    async def write() -> Envelope:
        event = make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
        async with probe_schema.acquire() as conn, conn.transaction():
            await append(conn, event)
        return event

    try:
        with relay.held():
            first = await write()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(got.get(), 1.0)
        message = await asyncio.wait_for(got.get(), 10)
        assert message.message_id == str(first.id)

        with relay.held():
            with relay.held():  # two requests at once; one ends, the other goes on
                pass
            second = await write()
            # Still held: published once hold_max (3 s from the first hold) is over.
            message = await asyncio.wait_for(got.get(), 15)
            assert message.message_id == str(second.id)
            third = await write()
            message = await asyncio.wait_for(got.get(), 10)
            assert message.message_id == str(third.id)
    finally:
        await relay.drain()
        running.cancel()
        await connection.close()
        await bus.close()


async def test_single_mail_jobs_of_a_batch_go_as_one_message_each_with_its_origin(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """The relay publishes the single mail jobs it finds together as one version 2
    message where the first of them was, each job with its writer's correlation id and
    trace; other rows (a version 2 job among them) go as they were written, in order.
    Published again (a crash before the commit), the pack is the same message."""
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, "probe4")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    mail = await channel.declare_queue(exclusive=True, auto_delete=True)
    await mail.bind(bus.exchange_name("mail"), routing_key="mail.requested")
    events = await channel.declare_queue(exclusive=True, auto_delete=True)
    await events.bind(bus.exchange_name("events"), routing_key="identity.user.disabled")
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)

    def job() -> MailRequested:
        return MailRequested(
            mail_id=uuid.uuid4(),
            template="invitation",
            to=f"{uuid.uuid4().hex[:8]}@example.com",
            ref_type="invitation",
            ref_id=uuid.uuid4(),
            context={"sealed": "x"},
        )

    def disabled() -> Envelope:
        return make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")

    singles = [
        make_event("mail.requested", job(), source="t", correlation_id=f"request-{n}")
        for n in range(3)
    ]
    several = make_event("mail.requested", MailJobs(jobs=[job(), job()]), source="t")
    before, between, after = disabled(), disabled(), disabled()
    written = [before, singles[0], between, singles[1], several, singles[2], after]
    for envelope in written:
        async with probe_schema.acquire() as conn, conn.transaction():
            await append(conn, envelope)
    trace = '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
    await probe_schema.pool.execute(
        "UPDATE outbox SET trace_context = $2 WHERE id = $1", singles[1].id, trace
    )

    assert await relay.flush_once() == len(written)
    assert await relay.backlog() == 0
    got = [await mail.get(timeout=5) for _ in range(2)]
    assert await mail.get(fail=False) is None
    pack, other = (orjson.loads(message.body) for message in got)
    assert pack["version"] == 2 and pack["type"] == "mail.requested"
    assert got[0].message_id == pack["id"] and got[0].type == "mail.requested"
    parsed = MailJobs.model_validate(pack["data"])
    assert [str(j.mail_id) for j in parsed.jobs] == [s.data["mail_id"] for s in singles]
    assert [j.correlation_id for j in parsed.jobs] == ["request-0", "request-1", "request-2"]
    assert [j.trace_context for j in parsed.jobs] == [None, trace, None]
    assert got[1].message_id == str(several.id) and other == orjson.loads(several.to_json())
    published = [(await events.get(timeout=5)).message_id for _ in range(3)]
    assert published == [str(before.id), str(between.id), str(after.id)]

    # The broker confirmed but the relay died before its commit: the same rows again are
    # the same pack, which the mailer's inbox takes once.
    await probe_schema.pool.execute("UPDATE outbox SET published_at = NULL")
    assert await relay.flush_once() == len(written)
    again = await mail.get(timeout=5)
    assert again.message_id == got[0].message_id and again.body == got[0].body
    await connection.close()
    await bus.close()


def test_an_owners_event_is_stale_past_the_inbox_window_and_a_command_or_mail_job_never() -> None:
    week = timedelta(hours=168)
    now = datetime.now(UTC)

    def aged(event_type: str, data: EventData, days: float) -> Envelope:
        envelope = make_event(event_type, data, source="test")
        return envelope.model_copy(update={"occurred_at": now - timedelta(days=days)})

    disabled = UserDisabled(user_id=uuid.uuid4())
    assert not stale(aged("identity.user.disabled", disabled, 6.9), week, now)
    assert stale(aged("identity.user.disabled", disabled, 7.1), week, now)
    # Not judged here: an idempotency key is kept for good, and the mailer judges a mail
    # job against how long it keeps mail ids (tests/mailer/test_retention.py).
    requested = InvitationRequested(portal_slug="acme", email="a@example.com", idempotency_key="k")
    assert not stale(aged("invitation.requested", requested, 30), week, now)
    job = MailRequested(
        mail_id=uuid.uuid4(),
        template="invitation",
        to="a@example.com",
        ref_type="invitation",
        ref_id=uuid.uuid4(),
        context={"sealed": "x"},
    )
    assert not stale(aged("mail.requested", job, 30), week, now)


async def test_the_backlog_gauge_counts_unroutable_rows_waiting_in_the_outbox(
    test_env: TestEnv, probe_schema: ProbePool
) -> None:
    """The relay set clientpress_outbox_backlog to 0 after any short batch, so the rows the
    broker returned (waiting their pause) read as no backlog at all: the gauge, and the
    backlog alert over it, said all was published while nothing was."""
    prefix, admin, channel = await _exchanges_nobody_binds(test_env)
    bus = Bus(test_env.amqp_url, prefix, "probe4")
    await bus.connect()
    relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
    jobs = [_mail_job(f"someone{n}@example.com") for n in range(3)]
    async with probe_schema.acquire() as conn, conn.transaction():
        for job in jobs:
            await append(conn, job)
    before = _unroutable_count("mail.requested")
    running = asyncio.create_task(relay.run())
    try:

        async def gauge_reads(rows: int) -> bool:
            for _ in range(200):
                if REGISTRY.get_sample_value("clientpress_outbox_backlog") == rows:
                    return True
                await asyncio.sleep(0.05)
            return False

        for _ in range(200):  # the broker returns the three, once each
            if _unroutable_count("mail.requested") >= before + 3:
                break
            await asyncio.sleep(0.05)
        assert _unroutable_count("mail.requested") == before + 3
        assert await gauge_reads(3), REGISTRY.get_sample_value("clientpress_outbox_backlog")
        # A new process finds them waiting their pause: none is due, yet three wait.
        await relay.drain(timeout=1.0)
        await running
        await probe_schema.pool.execute("UPDATE outbox SET next_attempt_at = now() + '1 hour'")
        OUTBOX_BACKLOG.set(0)
        relay = OutboxRelay(probe_schema.pool, bus, probe_schema.schema, test_env.database_url)
        running = asyncio.create_task(relay.run())
        assert await gauge_reads(3), REGISTRY.get_sample_value("clientpress_outbox_backlog")

        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(f"{prefix}.mail", "mail.requested")
        await probe_schema.pool.execute("UPDATE outbox SET next_attempt_at = now()")
        relay._wake.set()
        assert await gauge_reads(0), REGISTRY.get_sample_value("clientpress_outbox_backlog")
        assert await relay.backlog() == 0
    finally:
        await relay.drain(timeout=1.0)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await bus.close()
        await _drop_exchanges(admin, channel, prefix)


def test_a_delivery_count_past_any_pause_is_bounded() -> None:
    """The count of earlier deliveries comes from a header: one nobody could wait 2**n
    seconds for (``min(0.2 * 2**n, 5.0)`` overflowed a float) is read as a large one."""

    class Delivered:
        def __init__(self, headers: dict[str, Any]) -> None:
            self.headers = headers

    for headers, count in [
        ({"x-delivery-count": 10**6}, 100),
        ({"x-delivery-count": -3}, 0),
        ({}, 0),
    ]:
        read = bus_module._delivery_count(Delivered(headers))  # type: ignore[arg-type]
        assert read == count
        assert min(0.2 * 2**read, 5.0) <= 5.0


async def test_the_binding_keeper_binds_again_and_says_when_an_exchange_is_gone(
    test_env: TestEnv,
) -> None:
    """BindingKeeper.check, as every consuming service and the gateway's cache listener
    run it: an exchange declared again by hand gets the queue's bindings back; one that is
    gone is said once (``bindings_not_restored``, ``on_change(False)``), and once when it
    is back (``bindings_restored``, ``on_change(True)``)."""
    exchange_name = f"{test_env.bus_prefix}.keeper-{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect_robust(test_env.amqp_url)
    said: list[bool] = []
    keeper = bus_module.BindingKeeper(lambda: connection, said.append)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="a.#")
        keeper.keep(queue.name, exchange_name, "a.#")

        async def routed() -> bool:
            await exchange.publish(aio_pika.Message(b"x"), routing_key="a.b")
            return await queue.get(fail=False, timeout=5) is not None

        assert await routed()
        await channel.exchange_delete(exchange_name)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC)
        assert not await routed()  # declared again by hand: no binding any more
        await keeper.check()
        assert await routed()
        assert said == []  # nothing was refused: nothing to say

        await channel.exchange_delete(exchange_name)
        with structlog.testing.capture_logs() as logs:
            await keeper.check()
            await keeper.check()
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC)
            await keeper.check()
        events = [line["event"] for line in logs if line["event"].startswith("bindings_")]
        assert events == ["bindings_not_restored", "bindings_restored"], logs
        assert "NOT_FOUND" in next(line["reason"] for line in logs if "reason" in line)
        assert said == [False, True]
        assert await routed()
        await channel.exchange_delete(exchange_name)
    finally:
        await keeper.stop()
        await connection.close()
