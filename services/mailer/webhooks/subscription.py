"""The lifecycle events reach the mailer's queue only while some webhook endpoint wants
them. Its queue is declared bound to all of them (libs/common/broker.WEBHOOK_BINDINGS);
``settle`` then binds the types the endpoints want and unbinds the rest, so with no
endpoint an invitation costs the mailer no delivery, inbox row or transaction.

Never too few bindings: every settle reads the endpoints under one advisory lock and
changes the broker before that transaction ends, and adding an endpoint settles in the
transaction that inserts it, before it commits. So a settle that unbinds has read every
endpoint committed before it, and one added meanwhile binds after it. Too many is only a
cost (the handler finds no endpoint), so a failure leaves bindings as they are; each
replica settles again every ``SETTLE_EVERY`` seconds, and at start."""

from __future__ import annotations

import asyncio

import asyncpg
from aio_pika.abc import AbstractQueue
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from libs.common.bus import Bus
from libs.common.db import Conn, Db, transaction, xact_lock
from libs.common.errors import Unavailable
from libs.common.logging import get_logger

from . import repository
from .domain import EVENT_TYPES

log = get_logger(__name__)

LOCK = "mailer:webhook-subscription"
SETTLE_EVERY = 60.0
# How long adding an endpoint waits for a broker connection this replica doesn't have yet.
ATTACH_WAIT = 5.0
BROKER_TIMEOUT = 10.0


class Subscription:
    """The mailer's queue bound to the event types the webhook endpoints want."""

    def __init__(self) -> None:
        self._queue: AbstractQueue | None = None
        self._bus: Bus | None = None  # the one that declared the queue
        self._attached = asyncio.Event()
        self._bound: frozenset[str] | None = None  # what this replica bound last

    @property
    def bound(self) -> frozenset[str] | None:
        """The types this replica last bound the queue to (None: not settled yet)."""
        return self._bound

    async def attach(self, pool: asyncpg.Pool, queue: AbstractQueue, bus: Bus) -> None:
        """The consumer's queue is declared (bound to every type) on ``bus``: settle it.
        The bus's binding keeper (Bus.keep_bound) keeps only the types settled bound: it
        bound every type again each 10 s, all of them unwanted ones too."""
        self._queue, self._bus = queue, bus
        self._attached.set()
        await self.settle_now(pool)

    async def settle_now(self, db: Db) -> None:
        """Settle in a transaction of its own, if this replica has a broker connection
        (else the bindings stay as they are until it has)."""
        if self._queue is not None:
            async with transaction(db) as conn:
                await self.settle(conn)

    async def settle(self, conn: Conn) -> None:
        """In ``conn``'s transaction: bind the queue to the types some endpoint wants (as
        this transaction sees them) and unbind the others. Unavailable if this replica has
        no broker connection (after waiting ``ATTACH_WAIT`` for one)."""
        if self._queue is None:
            try:
                await asyncio.wait_for(self._attached.wait(), ATTACH_WAIT)
            except TimeoutError:
                raise _no_broker() from None
        queue, bus = self._queue, self._bus
        assert queue is not None and bus is not None
        exchange = bus.exchange_name("events")
        if bus.blocked:
            # A resource alarm: the broker reads nothing from the connection, so a bind
            # would wait out BROKER_TIMEOUT (and the gateway its own) for no answer.
            log.warning("webhook_settle_refused", reason="the broker blocks the connection")
            raise _no_broker()
        await xact_lock(conn, LOCK)
        wanted = frozenset(await repository.wanted_event_types(conn))
        try:
            for event_type in EVENT_TYPES:
                if event_type in wanted:
                    await queue.bind(exchange, event_type, timeout=BROKER_TIMEOUT)
                    bus.keep_bound(queue.name, exchange, event_type)
                else:
                    bus.let_go(queue.name, exchange, event_type)
                    await queue.unbind(exchange, event_type, timeout=BROKER_TIMEOUT)
        except (AMQPError, ConnectionError, TimeoutError, ChannelInvalidStateError) as exc:
            # The connection went away (it comes back by itself, and this replica settles
            # again): the transaction is rolled back, an endpoint being added isn't saved.
            raise _no_broker() from exc
        if wanted != self._bound:
            log.info("webhook_events_bound", events=sorted(wanted))
            self._bound = wanted


def _no_broker() -> Unavailable:
    return Unavailable(
        "The message broker can't be reached, so the endpoint would receive nothing."
        " Try again in a moment.",
        code="broker_unavailable",
    )
