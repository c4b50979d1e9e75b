"""The transactional outbox: write events with the change, relay them with confirms.

``append`` runs inside the caller's transaction and NOTIFYs the relay (delivered at
commit). The relay claims rows with ``FOR UPDATE SKIP LOCKED``, so several replicas
share the work without publishing a row twice at once; a crash between the confirm and
the commit republishes, and consumers drop the duplicate through their inbox.

A row the broker returns as unroutable (a mandatory type no queue is bound for yet)
stays pending and is tried again after a growing pause (``attempts``,
``next_attempt_at``). Mail jobs are sealed before they are written here
(libs/common/sealing.py), so no row holds a usable link.

Mail jobs the relay finds together in one batch go as one message (``mail.requested``
version 2), each job with its own correlation id and trace: one message for the broker
to carry and the mailer to record, instead of one each."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from .bus import Bus, ExchangeKind, Refused, Unroutable
from .db import Conn, Db, Listener
from .email import email_key
from .events import PRIVATE_TYPES, Envelope
from .logging import get_logger
from .metrics import EVENTS_PUBLISHED, EVENTS_REFUSED, EVENTS_UNROUTABLE, OUTBOX_BACKLOG
from .tracing import carrier, resumed

log = get_logger(__name__)

BACKLOG_COUNT_SECONDS = 2.0
# How often the relay checks that its LISTEN connection still answers (Listener.ensure).
LISTEN_CHECK_EVERY_SECONDS = 10.0
# An unroutable row waits 1, 2, 4 … seconds, at most this long, between tries.
UNROUTABLE_MAX_PAUSE_SECONDS = 60
# How long a relay held by a large request (OutboxRelay.held) waits at the most; after
# that it publishes as usual until every hold is released, so events are never held back
# longer than this, however many large requests follow one another.
HOLD_MAX_SECONDS = 5.0
# At most this many mail jobs in one packed message (what mail.requested version 2 takes).
JOBS_PER_PACK = 1000
# A pack's message id is named after its rows (uuid5): the same rows published again (a
# crash between the confirm and the commit) are the same message to the mailer's inbox.
_PACK_IDS = uuid.UUID("6f0c8f3e-4b5a-4d1e-9a77-3c2f1e0b9d41")


async def forget_published(
    conn: Conn, needles: Sequence[str], before: datetime | None = None
) -> int:
    """Delete the published rows (written before ``before``, when given) whose body names any of
    ``needles`` (an erased person's address), case-insensitively: kept an hour for nothing
    the relay needs. A row not yet published stays: it is still owed to the broker, and
    goes an hour after it was."""
    status = await conn.execute(
        "DELETE FROM outbox WHERE published_at IS NOT NULL"
        " AND ($2::timestamptz IS NULL OR created_at <= $2) AND EXISTS ("
        " SELECT 1 FROM unnest($1::text[]) AS n"
        # convert_from's text has the collation "C" (its encoding argument's, a name),
        # under which lower() changes ASCII letters alone: lowered in the database's own.
        " WHERE position(n IN lower(convert_from(body, 'UTF8') COLLATE \"default\")) > 0)",
        # A character at a time, as lower() does: str.lower makes a final capital sigma
        # another letter.
        [email_key(needle) for needle in needles if needle],
        before,
    )
    return int(status.rsplit(" ", 1)[-1])


async def append(conn: Conn, envelope: Envelope, *more: Envelope) -> None:
    """Write events inside the caller's transaction, in the order given, in one round
    trip: the rows, and a NOTIFY the relay receives when the caller commits."""
    envelopes = (envelope, *more)
    await conn.execute(
        "WITH rows AS (INSERT INTO outbox"
        " (id, exchange, routing_key, body, correlation_id, trace_context)"
        " SELECT id, exchange, routing_key, body, correlation_id, $6"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])"
        " WITH ORDINALITY AS e(id, exchange, routing_key, body, correlation_id, n)"
        "   ORDER BY n"
        " RETURNING 1)"
        " SELECT pg_notify('outbox_' || current_schema(), '') FROM rows LIMIT 1",
        *_columns(envelopes),
        carrier(),
    )


def _columns(envelopes: Sequence[Envelope]) -> tuple[list[object], ...]:
    """The outbox columns of ``envelopes``, one array each, for ``unnest``: id,
    exchange, routing key, body, correlation id."""
    return (
        [e.id for e in envelopes],
        [_exchange(e) for e in envelopes],
        [e.type for e in envelopes],
        [e.to_json() for e in envelopes],
        [e.correlation_id for e in envelopes],
    )


async def change_and_append(
    conn: Conn, change: str, args: Sequence[object], envelope: Envelope
) -> bool:
    """Run ``change`` (an UPDATE/INSERT/DELETE … RETURNING, placeholders $1..$n for
    ``args``) and, only if it touched a row, write ``envelope`` to the outbox and NOTIFY
    the relay: one statement, so atomic without a transaction, in one round trip instead
    of four (BEGIN, change, append, COMMIT). True when the change touched a row."""
    [row] = await write_with_events(
        conn,
        f"change AS ({change})",
        args,
        [envelope],
        result="SELECT EXISTS (SELECT 1 FROM change) AS applied",
    )
    return bool(row["applied"])


async def write_with_events(
    conn: Db,
    changes: str,
    args: Sequence[object],
    envelopes: Sequence[Envelope],
    *,
    result: str,
) -> list[asyncpg.Record]:
    """One statement, so atomic without a transaction: ``changes`` (common table
    expressions, ``name AS (…), …``, placeholders $1..$n for ``args``, the first named
    ``change``), then ``envelopes`` written to the outbox in order if ``change`` touched a
    row, with a NOTIFY for the relay. Answers ``result``, a SELECT over the expressions;
    it must answer a row whenever ``change`` touched one (that row carries the NOTIFY)."""
    n = len(args)
    return await conn.fetch(
        f"WITH {changes},"
        " event AS (INSERT INTO outbox"
        " (id, exchange, routing_key, body, correlation_id, trace_context)"
        f" SELECT id, exchange, routing_key, body, correlation_id, ${n + 6}"
        f" FROM unnest(${n + 1}::uuid[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::bytea[],"
        f"  ${n + 5}::text[])"
        " WITH ORDINALITY AS e(id, exchange, routing_key, body, correlation_id, n)"
        " WHERE EXISTS (SELECT 1 FROM change) ORDER BY n RETURNING 1),"
        " woken AS (SELECT pg_notify('outbox_' || current_schema(), '')"
        "  WHERE EXISTS (SELECT 1 FROM event))"
        f" SELECT r.* FROM ({result}) AS r, (SELECT count(*) FROM woken) AS w",
        *args,
        *_columns(envelopes),
        carrier(),
    )


async def changes_and_append(
    conn: Conn,
    change: str,
    args: Sequence[object],
    events: Sequence[tuple[uuid.UUID, Envelope, str | None]],
) -> set[uuid.UUID]:
    """``change_and_append`` for many rows in one statement. ``change`` returns a column
    ``key`` for each row it touched; ``events`` are ``(key, envelope, trace_context)``,
    and each is written only if its key was touched (with one NOTIFY for them all).
    Returns the keys touched. ``trace_context`` is given per event, since a batch carries
    the work of many traces."""
    rows = await write_with_keyed_events(
        conn, f"change AS ({change})", args, events, result="SELECT key FROM change"
    )
    return {row["key"] for row in rows}


async def write_with_keyed_events(
    conn: Db,
    changes: str,
    args: Sequence[object],
    events: Sequence[tuple[uuid.UUID, Envelope, str | None]],
    *,
    result: str,
) -> list[asyncpg.Record]:
    """``write_with_events`` for many rows, each with its own events, in one statement
    (atomic without a transaction): ``changes`` are common table expressions, the first
    named ``change`` and returning a column ``key`` for each row it touched; ``events`` are
    ``(key, envelope, trace_context)``, each written only if its key was touched, in the
    order given, with one NOTIFY for them all. Answers ``result``, a SELECT over the
    expressions that answers a row whenever ``change`` touched one."""
    n = len(args)
    return await conn.fetch(
        f"WITH {changes},"
        " event AS (INSERT INTO outbox"
        " (id, exchange, routing_key, body, correlation_id, trace_context)"
        " SELECT e.id, e.exchange, e.routing_key, e.body, e.correlation_id, e.trace_context"
        f" FROM unnest(${n + 1}::uuid[], ${n + 2}::uuid[], ${n + 3}::text[],"
        f"  ${n + 4}::text[], ${n + 5}::bytea[], ${n + 6}::text[], ${n + 7}::text[])"
        " WITH ORDINALITY"
        "   AS e(key, id, exchange, routing_key, body, correlation_id, trace_context, n)"
        " WHERE e.key IN (SELECT key FROM change) ORDER BY e.n RETURNING 1),"
        " woken AS (SELECT pg_notify('outbox_' || current_schema(), '')"
        "  WHERE EXISTS (SELECT 1 FROM event))"
        f" SELECT r.* FROM ({result}) AS r, (SELECT count(*) FROM woken) AS w",
        *args,
        [key for key, _, _ in events],
        *_columns([e for _, e, _ in events]),
        [trace for _, _, trace in events],
    )


def _exchange(envelope: Envelope) -> ExchangeKind:
    return "mail" if envelope.type in PRIVATE_TYPES else "events"


@dataclass(frozen=True)
class _Message:
    """What the relay publishes for one or several outbox rows."""

    rows: Sequence[asyncpg.Record]
    exchange: ExchangeKind
    routing_key: str
    body: bytes
    message_id: str
    correlation_id: str | None
    trace_context: str | None


def _messages(rows: Sequence[asyncpg.Record]) -> list[_Message]:
    """A batch's rows as messages, in their order: each row its own, except single mail
    jobs (``mail.requested`` version 1), which go together, where the first of them was,
    as version 2 messages (a lone job goes as it was written)."""
    jobs = {row["id"]: job for row in rows if (job := _single_job(row)) is not None}
    if len(jobs) < 2:
        return [_as_written(row) for row in rows]
    packed = [row for row in rows if row["id"] in jobs]
    messages: list[_Message] = []
    for row in rows:
        if row["id"] not in jobs:
            messages.append(_as_written(row))
        elif row is packed[0]:
            for at in range(0, len(packed), JOBS_PER_PACK):
                chunk = packed[at : at + JOBS_PER_PACK]
                messages.append(_pack(chunk, [jobs[r["id"]] for r in chunk]))
    return messages


def _as_written(row: asyncpg.Record) -> _Message:
    return _Message(
        [row],
        row["exchange"],
        row["routing_key"],
        row["body"],
        str(row["id"]),
        row["correlation_id"],
        row["trace_context"],
    )


def _single_job(row: asyncpg.Record) -> dict[str, Any] | None:
    """The envelope of a version 1 mail job, or None for any other row."""
    if row["routing_key"] != "mail.requested":
        return None
    envelope = orjson.loads(row["body"])
    return envelope if envelope.get("version") == 1 else None


def _pack(rows: Sequence[asyncpg.Record], envelopes: Sequence[dict[str, Any]]) -> _Message:
    """Single mail jobs as one ``mail.requested`` version 2 message; each job keeps the
    correlation id and the trace of the request that asked for it."""
    first = envelopes[0]
    message_id = str(uuid.uuid5(_PACK_IDS, ",".join(str(row["id"]) for row in rows)))
    jobs = [
        {
            **envelope["data"],
            "correlation_id": envelope["correlation_id"],
            **({"trace_context": row["trace_context"]} if row["trace_context"] else {}),
        }
        for row, envelope in zip(rows, envelopes, strict=True)
    ]
    body = orjson.dumps(
        {
            "id": message_id,
            "type": "mail.requested",
            "version": 2,
            "occurred_at": first["occurred_at"],
            "source": first["source"],
            "correlation_id": first["correlation_id"],
            "data": {"jobs": jobs},
        }
    )
    return _Message(
        rows,
        "mail",
        "mail.requested",
        body,
        message_id,
        first["correlation_id"],
        rows[0]["trace_context"],
    )


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        schema: str,
        dsn: str,
        *,
        batch: int = 200,
        hold_max: float = HOLD_MAX_SECONDS,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_done = asyncio.Event()
        self._loop_done.set()
        self._listener = Listener(
            dsn, f"outbox_{schema}", self._on_notify, name="outbox", service=schema
        )
        self.hold_max = hold_max
        self._holds = 0
        self._held_since = 0.0
        self._released = asyncio.Event()
        self._released.set()
        # Rows the broker returned (unroutable) wait their pause in the outbox: while any
        # may, a short batch does not mean an empty outbox, so the backlog is counted. A
        # new relay may find some a previous process left: it counts once.
        self._returned_waiting = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Around a request that writes many rows at once (a batch of invitations): the
        relay publishes nothing meanwhile, for ``hold_max`` seconds at the most, so the
        process and the machine spend themselves on writing and answering it, and what it
        wrote is published right after. Its rows are committed either way: holding only
        orders the work. Other replicas' relays are not held."""
        if self._holds == 0:
            self._held_since = time.monotonic()
            self._released.clear()
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0:
                self._released.set()

    async def _while_held(self) -> None:
        """Wait while a request holds the relay, until ``hold_max`` has passed since the
        first hold of the run; past it, return at once until every hold is released."""
        left = self._held_since + self.hold_max - time.monotonic()
        if self._holds and left > 0 and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), left)

    async def flush_once(self) -> int:
        """Publish one batch; returns how many rows were confirmed by the broker."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, exchange, routing_key, body, correlation_id, attempts, trace_context"
                " FROM outbox"
                " WHERE published_at IS NULL"
                "   AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return 0
            messages = _messages(rows)
            outcomes = await asyncio.gather(
                *(self._publish(message) for message in messages), return_exceptions=True
            )
            # A pack's rows share its fate: all confirmed, or all returned, or all kept.
            sent = [
                row
                for message, outcome in zip(messages, outcomes, strict=True)
                if outcome is None
                for row in message.rows
            ]
            # Returned (no queue bound) or refused (a full queue): each waits a growing
            # pause in the outbox, instead of being offered again at once.
            returned = [
                row
                for message, outcome in zip(messages, outcomes, strict=True)
                if isinstance(outcome, Unroutable | Refused)
                for row in message.rows
            ]
            refused = {
                row["id"]
                for message, outcome in zip(messages, outcomes, strict=True)
                if isinstance(outcome, Refused)
                for row in message.rows
            }
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])",
                [row["id"] for row in sent],
            )
            if returned:
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1,"
                    " next_attempt_at = now() + make_interval(secs => least($2::int,"
                    "   power(2, least(attempts, 16))::int))"
                    " WHERE id = ANY($1::uuid[])",
                    [row["id"] for row in returned],
                    UNROUTABLE_MAX_PAUSE_SECONDS,
                )
        for row in sent:
            EVENTS_PUBLISHED.labels(row["routing_key"]).inc()
        if returned:
            self._returned_waiting = True
        for row in returned:
            full = row["id"] in refused  # nacked by a full queue, not returned unbound
            (EVENTS_REFUSED if full else EVENTS_UNROUTABLE).labels(row["routing_key"]).inc()
            log.warning(
                "outbox_refused" if full else "outbox_unroutable",
                event_type=row["routing_key"],
                event_id=str(row["id"]),
                attempts=row["attempts"] + 1,
                **({"reason": "queue_full"} if full else {}),
            )
        failures = [
            o
            for o in outcomes
            if isinstance(o, BaseException) and not isinstance(o, Unroutable | Refused)
        ]
        if failures:
            # The broker went away mid-batch: what it confirmed is recorded above; the rest
            # stays pending for the next pass.
            raise failures[0]
        return len(sent)

    async def _publish(self, message: _Message) -> None:
        # Each message in its own task (gather), so each resumes its own writer's trace (a
        # pack, its first job's: each job carries its own to the mailer).
        with resumed(message.trace_context):
            await self.bus.publish(
                message.exchange,
                message.routing_key,
                message.body,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                type=message.routing_key,
            )

    async def backlog(self) -> int:
        value = await self.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return int(value or 0)

    async def run(self) -> None:
        self._loop_done.clear()
        try:
            await self._run()
        finally:
            self._loop_done.set()

    async def _run(self) -> None:
        await self._listener.ensure()
        purge_every, since_purge = 600, 0
        loop = asyncio.get_running_loop()
        counted_at = -BACKLOG_COUNT_SECONDS
        checked_at = loop.time()
        while not self._stopping:
            await self._while_held()
            if loop.time() - checked_at >= LISTEN_CHECK_EVERY_SECONDS:
                # A listener left silent by a database black hole would lose every wake-up
                # for good (the poll still finds the rows, a second late each).
                checked_at = loop.time()
                await self._listener.ensure()
            try:
                published = await self.flush_once()
                # A short batch means nothing was left behind it (rows committed since are
                # picked up on the next pass), unless the broker returned some: they wait
                # their pause outside any batch. Behind a full one, or while returned rows
                # may wait, count now and then: a count per batch cost more than the batch
                # under a long backlog.
                if published < self.batch and not self._returned_waiting:
                    OUTBOX_BACKLOG.set(0)
                elif loop.time() - counted_at >= BACKLOG_COUNT_SECONDS:
                    counted_at = loop.time()
                    waiting = await self.backlog()
                    OUTBOX_BACKLOG.set(waiting)
                    self._returned_waiting = self._returned_waiting and waiting > 0
                since_purge += 1
                if since_purge >= purge_every:
                    since_purge = 0
                    await self.pool.execute(
                        "DELETE FROM outbox WHERE published_at < now() - interval '1 hour'"
                    )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping or task is None or task.cancelling():
                    raise
                # Not this task's cancellation but one a library let through (aiormq ends
                # a connection it found stuck by cancelling it): passed on, it ended the
                # relay for good and nothing was published again until a restart.
                log.warning("outbox_relay_retry", error="CancelledError", blocked=self.bus.blocked)
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:
                # Broker or database away: keep the rows, try again shortly.
                # A publish that timed out under a broker's resource alarm says nothing of
                # it itself: ``blocked`` names the cause.
                log.warning(
                    "outbox_relay_retry",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    blocked=self.bus.blocked,
                )
                with contextlib.suppress(Exception):  # the broker may be away, not the database
                    OUTBOX_BACKLOG.set(await self.backlog())
                await asyncio.sleep(1.0)
                await self._listener.ensure()
                continue
            if published == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def drain(self, timeout: float = 5.0) -> None:
        """On shutdown: publish what is already committed, within a bound. Not while the
        broker blocks the connection (a resource alarm): it would confirm nothing before
        the alarm clears, and the rows wait in the outbox for the next start."""
        if self.bus.blocked:
            log.warning("outbox_drain_skipped", reason="broker blocks the connection")
            timeout = 0.0
        self._stopping = True
        self._wake.set()
        self._released.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Let the loop finish the batch it may be publishing, rather than cancel it midway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loop_done.wait(), timeout)
        with contextlib.suppress(Exception):
            while loop.time() < deadline and await self.flush_once():
                pass
        await self._listener.close()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()
