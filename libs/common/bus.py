"""RabbitMQ: one robust connection, the topic exchanges, publishing with confirms and
consuming into handlers that are idempotent through the inbox.

Names (with ``BUS_PREFIX``): ``<prefix>.events`` (public events), ``<prefix>.mail``
(private mail jobs), ``<prefix>.dlx`` (dead letters), a quorum queue ``<prefix>.<service>``
per consuming service and its ``<prefix>.<service>.dead`` dead-letter queue."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any, Generic, TypeVar
from uuid import UUID

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aio_pika.connection import make_url
from opentelemetry.trace import SpanKind

from . import amqp_decode, broker, tracing
from .acks import Acks
from .actor import set_actor
from .amqp_transport import CoalescingTransportFactory
from .batching import GroupCommit
from .broker import Binding, ExchangeKind
from .context import set_correlation_id, set_sender
from .db import DATABASE_AWAY, Conn, UseCaseDeps
from .errors import Unavailable
from .events import (
    Envelope,
    Event,
    EventData,
    MalformedEvent,
    parse_data,
    parse_envelope,
    type_label,
)
from .logging import get_logger
from .metrics import CONSUMER_CANCELLED, EVENTS_CONSUMED, EVENTS_DEAD_LETTERED

log = get_logger(__name__)

__all__ = [
    "Binding",
    "BrokerConnectionLost",
    "Bus",
    "Consumer",
    "ExchangeKind",
    "Handler",
    "Refused",
    "Together",
    "Unroutable",
    "arrival_context",
    "in_inbox",
    "stale",
    "trusted_sender",
]

Handler = Callable[[Conn, Envelope, EventData], Awaitable[None]]

D = TypeVar("D", bound=UseCaseDeps)
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Together(Generic[T]):
    """A handler of many events at once: the events of its types that share a transaction
    (group commit) and follow one another are handed over in one call, in arrival order,
    so that one statement can carry them all. ``T`` is what it runs on: a service's
    ``Deps`` in a service's table (``in_inbox``), the connection in the consumer's. The
    call runs in the first event's context (its correlation id in the logs); if it
    raises, the batch is rolled back and each event is applied on its own, a call of one.
    What is one event's own (its answer, its log lines) can run in ``arrival_context``.
    ``wants``: whether an event (by its envelope alone) is one the handler acts on; the
    others are acknowledged at once, without a transaction or an inbox row."""

    apply: Callable[[T, Sequence[Event]], Awaitable[None]]
    wants: Callable[[Envelope], bool] | None = None


# The contexts the events of the Together run under way arrived in, by event id.
_RUN_CONTEXTS: contextvars.ContextVar[Mapping[UUID, contextvars.Context] | None] = (
    contextvars.ContextVar("run_contexts", default=None)
)


def arrival_context(envelope: Envelope) -> contextvars.Context:
    """A copy of the context an event of a Together run arrived in: its correlation id,
    log fields and trace, for the part of the run's work that is that event's own (the
    events it publishes, its log lines). Outside a run, a copy of the current context."""
    run = _RUN_CONTEXTS.get()
    arrived = None if run is None else run.get(envelope.id)
    return arrived.copy() if arrived is not None else contextvars.copy_context()


AnyHandler = Handler | Together[Conn]
ServiceHandler = Callable[[D, Envelope, EventData], Awaitable[None]] | Together[D]


def in_inbox(
    deps: Callable[[], D], handlers: Mapping[str, ServiceHandler[D]]
) -> dict[str, AnyHandler]:
    """A service's event handlers, which take its ``Deps`` first like its use cases, as the
    consumer's: each runs on ``deps().within(conn)``, the inbox transaction's connection,
    so whatever the use case writes commits (or not) with the inbox row. ``deps`` is read
    per event: the service's ``Deps`` is built once its pool is open. One ``Together``
    named for several types stays one, so a run may mix those types."""
    bound: dict[int, Together[Conn]] = {}

    def bind_many(handler: Together[D]) -> Together[Conn]:
        async def apply(conn: Conn, events: Sequence[Event]) -> None:
            await handler.apply(deps().within(conn), events)

        return bound.setdefault(id(handler), Together(apply, handler.wants))

    def bind(handler: ServiceHandler[D]) -> AnyHandler:
        if isinstance(handler, Together):
            return bind_many(handler)

        async def handle(conn: Conn, envelope: Envelope, data: EventData) -> None:
            await handler(deps().within(conn), envelope, data)

        return handle

    return {event_type: bind(handler) for event_type, handler in handlers.items()}


MAX_DELIVERIES = broker.MAX_DELIVERIES
# A dependency that is away (the database restarting, a service down) is waited out while
# holding the message, instead of spending the message's deliveries: an outage of a few
# seconds must not dead-letter every message in flight.
DEPENDENCY_AWAY: tuple[type[BaseException], ...] = (*DATABASE_AWAY, Unavailable)
DEPENDENCY_PATIENCE_SECONDS = 60.0
# At most this many consumed events share a transaction (the channel's prefetch bounds it
# too): the inbox rows and effects of whatever arrived while the last one committed.
APPLY_BATCH = 32
# An event on its way into the shared transaction: with its handler, its data and the
# context (correlation id, log fields, trace) it arrived with.
Applying = tuple[Envelope, AnyHandler, EventData, contextvars.Context]


# How long a shutdown waits for the broker to answer a cancel or a close: a broker that
# blocks the connection (a resource alarm) reads nothing from it and never answers, and
# the service must still stop within its grace period.
CLOSE_SECONDS = 3.0


# How often a consumer the broker cancelled looks whether aio-pika has it consuming again.
RESUME_POLL_SECONDS = 0.1


class CancelWatch:
    """Hears the broker cancel a consumer (``basic.cancel``: its queue deleted, or a quorum
    queue's leader gone) and sees aio-pika consume again. aio-pika declares the queue and
    consumes again by itself, but only says so at debug level, and not at all while it
    can't (the queue declared again by someone else, with other arguments): ``cancelled``
    is True from the cancel until the consumer is back. ``on_change(cancelled)`` is called
    at both ends."""

    def __init__(
        self, channel: AbstractRobustChannel, tag: str, on_change: Callable[[bool], None]
    ) -> None:
        self.channel = channel
        self.tag = tag
        self.on_change = on_change
        self.cancelled = False
        self._resumed: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._hear()
        # A reopened channel (after a reconnection) is a new aiormq channel to listen on.
        self.channel.reopen_callbacks.add(self._on_reopened)

    async def close(self) -> None:
        if self._resumed is not None:
            self._resumed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resumed

    async def _hear(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)

    async def _on_reopened(self, *_: object) -> None:
        await self._hear()

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag != self.tag or self.cancelled:
            return
        self.cancelled = True
        self.on_change(True)
        self._resumed = asyncio.create_task(self._until_consuming(), name="consumer-resume")

    async def _until_consuming(self) -> None:
        while True:
            await asyncio.sleep(RESUME_POLL_SECONDS)
            try:
                underlay = await self.channel.get_underlay_channel()
            except Exception as exc:  # the channel between two lives (reopening): look again
                log.debug("consumer_resume_check_failed", error=type(exc).__name__)
                continue
            if isinstance(underlay, aiormq.Channel) and self.tag in underlay.consumers:
                self.cancelled = False
                self.on_change(False)
                return


class Unroutable(Exception):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class Refused(Exception):
    """The broker nacked a message: a queue it routes to is full (the installation's queue
    limits, ``overflow: reject-publish``) or could not take it. Nothing was lost: the
    outbox keeps it and tries again once the queue has room."""


class BrokerConnectionLost(aiormq.exceptions.AMQPConnectionError):
    """A publish ended by the loss of its connection (found stuck, or closed) before the
    broker confirmed it: it may or may not have been routed; the outbox tries it again."""


# How often a publishing channel the broker closed is tried again (Bus._publish_channel_open).
REOPEN_EVERY_SECONDS = 1.0
# How often a consuming service binds its queues again (Bus.keep_bound). An exchange an
# operator deleted and then declared again by hand (rabbitmqadmin, another program, a
# definitions import without the bindings) is back without the queues' bindings, and
# the broker says so to nobody: it takes every publish and routes it nowhere (a
# mandatory one comes back and waits in the outbox, any other is dropped). A bind of
# what is bound already changes nothing, and costs one frame.
BINDINGS_CHECK_SECONDS = 10.0


def link_ready(connection: AbstractRobustConnection | None) -> bool:
    """The link is up right now. A robust connection is never "closed" while it
    reconnects; its ``connected`` event says whether it is through."""
    return connection is not None and not connection.is_closed and connection.connected.is_set()


def link_blocked(connection: AbstractRobustConnection | None) -> bool:
    """The broker has blocked ``connection`` (``connection.blocked``: a memory or disk
    alarm): it reads nothing more from it, publishes and acknowledgements included, until
    the alarm clears. aiormq keeps that state in the event its ``ready()`` waits on and
    exposes nothing else; tests/faults/test_alarm.py raises a real alarm, so a release
    that renames it fails there instead of reporting "ok" again."""
    transport = connection.transport if connection is not None else None
    if transport is None:
        return False
    unblocked = getattr(transport.connection, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


@contextlib.asynccontextmanager
async def side_channel(
    connection: AbstractRobustConnection | None,
) -> AsyncIterator[Callable[[], Awaitable[aiormq.abc.AbstractChannel]] | None]:
    """A channel apart from the consumers' and the publishers', for a question or a
    repair that the broker may answer by closing the channel (a passive declare of a
    missing queue, a bind to a missing exchange). Yields None while the link is down or
    blocked; otherwise a function giving the channel, opened on first use and again after
    the broker closed it, each within ``CLOSE_SECONDS``. Closed at the end."""
    transport = connection.transport if connection is not None else None
    if transport is None or not link_ready(connection) or link_blocked(connection):
        yield None
        return
    amqp = transport.connection
    current: aiormq.abc.AbstractChannel | None = None

    async def channel() -> aiormq.abc.AbstractChannel:
        nonlocal current
        if current is None or current.is_closed:
            current = await asyncio.wait_for(amqp.channel(), CLOSE_SECONDS)
        return current

    try:
        yield channel
    finally:
        if current is not None and not current.is_closed:
            await _bounded("channel", current.close())


class BindingKeeper:
    """Bindings made again every BINDINGS_CHECK_SECONDS on a side channel of
    ``connection()``, while it is up: an exchange deleted and declared again by hand,
    without the bindings, routes to the queues again within that time. A binding that
    can't be made (the exchange deleted and not back) is logged once, as
    ``bindings_not_restored`` with the broker's words, and ``bindings_restored`` once it
    is made again; ``on_change(True)`` / ``on_change(False)`` say the same to the owner.
    A reconnection declares and binds the queues by itself, so a link that is down is
    left alone. Used by every consuming service's Bus and by the gateway's cache
    listener."""

    def __init__(
        self,
        connection: Callable[[], AbstractRobustConnection | None],
        on_change: Callable[[bool], object] | None = None,
    ) -> None:
        self._connection = connection
        self._on_change = on_change
        # (queue, exchange, routing key), in order.
        self._bound: dict[tuple[str, str, str], None] = {}
        # The (queue, exchange) bindings the last check could not make, the broker's words.
        self._unbound: dict[tuple[str, str], str] = {}
        self._task: asyncio.Task[None] | None = None

    def keep(self, queue: str, exchange: str, routing_key: str) -> None:
        self._bound[(queue, exchange, routing_key)] = None
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bus-bindings")

    def let_go(self, queue: str, exchange: str, routing_key: str) -> None:
        """Keep the binding no more: its owner removes it on purpose."""
        self._bound.pop((queue, exchange, routing_key), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BINDINGS_CHECK_SECONDS)
            try:
                await self.check()
            except Exception as exc:  # the broker away or slow: the next check tries again
                log.debug("bindings_check_failed", error=type(exc).__name__)

    async def check(self) -> None:
        """Each kept binding, on a side channel (a refused bind closes the channel it is
        sent on: the consumers' and the publishers' stay as they are)."""
        # (queue, exchange) → the broker's words: one refused bind says it for the rest.
        unbound: dict[tuple[str, str], str] = {}
        async with side_channel(self._connection()) as channel:
            if channel is None:
                return
            for binding in list(self._bound):
                queue, exchange, routing_key = binding
                if (queue, exchange) in unbound or binding not in self._bound:
                    continue  # a refused exchange, or a binding let go during this check
                try:
                    await asyncio.wait_for(
                        (await channel()).queue_bind(queue, exchange, routing_key=routing_key),
                        CLOSE_SECONDS,
                    )
                except aiormq.exceptions.ChannelClosed as exc:
                    unbound[(queue, exchange)] = str(exc)
        for (queue, exchange), reason in unbound.items():
            if (queue, exchange) not in self._unbound:
                log.warning("bindings_not_restored", queue=queue, exchange=exchange, reason=reason)
        restored = self._unbound.keys() - unbound.keys()
        for queue, exchange in restored:
            log.info("bindings_restored", queue=queue, exchange=exchange)
        lost = bool(unbound) and not self._unbound
        self._unbound = unbound
        if self._on_change is not None:
            if lost:
                self._on_change(False)
            elif restored and not unbound:
                self._on_change(True)


class Bus:
    """One service's connection, as its own broker user: everything it publishes carries
    that user as ``user_id``, which RabbitMQ checks, so consumers know who sent it."""

    def __init__(self, url: str, prefix: str, service: str) -> None:
        self.url = url
        self.prefix = prefix
        self.service = service
        self.user = broker.user_of(url)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractRobustExchange] = {}
        self._consumer_channels: list[AbstractRobustChannel] = []
        self._reopening = asyncio.Lock()
        self._reopen_failed: tuple[float, BaseException] | None = None
        self._bindings = BindingKeeper(lambda: self._connection)

    def exchange_name(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    def queue_name(self, queue: str | None = None) -> str:
        """``<prefix>.<queue>``: the service's main queue when None."""
        return f"{self.prefix}.{queue or self.service}"

    async def connect(self) -> None:
        # Whatever a sender puts in a message's properties must not close this connection
        # (amqp_decode.py).
        amqp_decode.install()
        connection = aio_pika.RobustConnection(
            make_url(self.url),
            client_properties={"connection_name": f"clientpress-{self.service}"},
        )
        # Frames written within a millisecond (a relay batch, a batch's acks) leave in one
        # send: amqp_transport.py. aio_pika passes its kwargs on to aiormq.
        connection.kwargs["transport_factory"] = CoalescingTransportFactory()
        # Held before it connects: an app stopped while connecting (its start task
        # cancelled) still closes it in close(), instead of leaving behind a robust
        # connection that goes on reconnecting by itself.
        self._connection = connection
        await connection.connect(timeout=10)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        assert isinstance(self._channel, aio_pika.RobustChannel)
        # Passive: the exchanges are the provisioning's (libs/common/provision.py); a
        # service's user may publish to them but not create or delete them.
        for kind in ("events", "mail", "dlx"):
            exchange = await self._channel.declare_exchange(self.exchange_name(kind), passive=True)
            assert isinstance(exchange, aio_pika.RobustExchange)
            self._exchanges[kind] = exchange

    @property
    def ready(self) -> bool:
        """The link is up right now."""
        return link_ready(self._connection)

    @property
    def blocked(self) -> bool:
        """The broker has blocked this connection (link_blocked)."""
        return link_blocked(self._connection)

    async def dead_letters(self, queue: str | None = None) -> int | None:
        """How many messages wait in the dead-letter queue of this service's queue
        (``queue``: another of its own), or None when the broker can't say now (away,
        blocking, the queue not there). Asked on a side channel: the passive declare of a
        missing queue closes the channel it is sent on."""
        try:
            async with side_channel(self._connection) as channel:
                if channel is None:
                    return None
                declared = await asyncio.wait_for(
                    (await channel()).queue_declare(f"{self.queue_name(queue)}.dead", passive=True),
                    CLOSE_SECONDS,
                )
        except Exception as exc:  # the broker away, slow, or the queue missing: unknown
            log.debug("dead_letters_unknown", error=type(exc).__name__)
            return None
        return int(declared.message_count or 0)

    def refusal(self, exc: BaseException) -> str | None:
        """What a failed connection attempt means when the broker turned this user away,
        for the log; None for anything else (the broker away, a network fault)."""
        refused_login = (
            aiormq.exceptions.AuthenticationError,
            aiormq.exceptions.ProbableAuthenticationError,
        )
        if isinstance(exc, refused_login):
            return (
                f"RabbitMQ refused the login of {self.user}: the password in AMQP_URL /"
                f" {self.service.upper()}_BROKER_PASSWORD is not the broker's (a rotation"
                " applied on one side only) or the user does not exist"
            )
        # RabbitMQ answers Connection.Open with Connection.Close (NOT_ALLOWED) when the user
        # may not use the vhost; aiormq reports that only as an unexpected frame.
        text = str(exc)
        if (
            isinstance(exc, aiormq.exceptions.InvalidFrameError)
            and "Connection.OpenOk" in text
            and "Connection.Close" in text
        ):
            return (
                f"RabbitMQ refused the vhost {broker.vhost_of(self.url)!r} to {self.user}: it"
                " has no permissions on the vhost (or the vhost does not exist, or a"
                " connection limit is reached); re-run the broker provisioning"
            )
        # The passive declare of an exchange the provisioning makes: a new broker, or one
        # lost with its definitions, that nobody provisioned for this BUS_PREFIX.
        if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
            missing = re.search(r"no exchange '([^']+)'", text)
            name = missing.group(1) if missing else f"{self.prefix}.events"
            return (
                f"RabbitMQ has no exchange {name!r} (BUS_PREFIX={self.prefix!r}): this broker"
                " was not provisioned for it (a new broker, or one lost with its"
                " definitions); run python -m libs.common.provision provision"
            )
        return None

    async def close(self) -> None:
        """Close the consumers' channels, then the connection, each within
        ``CLOSE_SECONDS``. A blocked connection's channels are left to the connection's
        close: the broker would read neither their close nor answer it."""
        await self._bindings.stop()
        blocked = self.blocked
        for channel in self._consumer_channels:
            if not channel.is_closed and not blocked:
                await _bounded("channel", channel.close())
        self._consumer_channels.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            await _bounded("connection", connection.close())

    async def publish(
        self,
        kind: ExchangeKind,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        correlation_id: str | None,
        type: str,
        timestamp: Any = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm. A type that a service's
        durable queue must receive goes mandatory: if no queue is bound, the broker returns
        it and this raises Unroutable instead of the message vanishing."""
        headers: dict[str, Any] = {}
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            type=type,
            app_id=self.service,
            user_id=self.user,
            timestamp=timestamp,
        )
        with tracing.span(
            f"publish {routing_key}",
            SpanKind.PRODUCER,
            {
                "messaging.system": "rabbitmq",
                "messaging.destination.name": self.exchange_name(kind),
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": message_id,
            },
        ) as span:
            # The trace goes on in the consumer: traceparent (and tracestate) in the headers.
            tracing.outgoing(message.headers)
            await self._publish_channel_open()
            try:
                await self._exchanges[kind].publish(
                    message,
                    routing_key=routing_key,
                    mandatory=broker.mandatory(routing_key),
                    timeout=10,
                )
            except aio_pika.exceptions.PublishError as exc:
                tracing.failed(span, "unroutable")
                raise Unroutable(f"{routing_key} returned by the broker: no queue bound") from exc
            except aio_pika.exceptions.DeliveryError as exc:
                # A nack, not a return: the message was routed, and a queue refused it.
                tracing.failed(span, "refused")
                raise Refused(
                    f"{routing_key} refused by the broker: a queue it goes to is full"
                ) from exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this task is being cancelled: a stop, a timeout around it
                # aiormq closes a connection it found stuck (no frame within the heartbeat
                # grace: a black hole) by cancelling it, and the publishes waiting on it
                # get that CancelledError. Passed on as it is, it ended the outbox relay's
                # task for good, and nothing was published again until a restart.
                tracing.failed(span, "connection_lost")
                raise BrokerConnectionLost(
                    f"{routing_key}: the broker connection was lost before its confirm"
                ) from None

    async def _publish_channel_open(self) -> None:
        """Reopen the publishing channel if the broker closed it while the connection
        stayed up. A publish to an exchange an operator deleted closes its channel
        (404 NOT_FOUND); aio-pika's robust channel reopens it by declaring the exchanges
        again, is refused while they are missing, and then stays closed for good: every
        publish failed with "RobustChannel … closed" long after the exchange was
        provisioned again (tests/faults/test_exchange_deleted.py). Reopened here, once
        at a time and at most once per REOPEN_EVERY_SECONDS; while an exchange is still
        missing this raises the broker's own words ("NOT_FOUND - no exchange …")."""
        channel = self._channel
        if channel is None or not channel.is_closed or not self.ready:
            return  # open, or the robust connection is reconnecting and will reopen it
        async with self._reopening:
            if not channel.is_closed or not self.ready:
                return
            loop = asyncio.get_running_loop()
            failed = self._reopen_failed
            if failed is not None and loop.time() - failed[0] < REOPEN_EVERY_SECONDS:
                raise failed[1]
            log.warning("publish_channel_reopening")
            try:
                await channel.reopen()
            except Exception as exc:
                self._reopen_failed = (loop.time(), exc)
                raise
            self._reopen_failed = None
            log.info("publish_channel_reopened")

    async def publish_envelope(self, envelope: Envelope, kind: ExchangeKind = "events") -> None:
        await self.publish(
            kind,
            envelope.type,
            envelope.to_json(),
            message_id=str(envelope.id),
            correlation_id=envelope.correlation_id,
            type=envelope.type,
            timestamp=envelope.occurred_at,
        )

    async def declare_queue(
        self,
        bindings: Sequence[Binding],
        *,
        channel: AbstractRobustChannel | None = None,
        queue: str | None = None,
    ) -> aio_pika.abc.AbstractRobustQueue:
        """Declare and bind ``<prefix>.<queue>`` (the service's main queue when None) and
        its dead-letter queue, then remove the queue's retired bindings
        (``broker.RETIRED_BINDINGS``). A retired binding is removed only here, after the
        bindings of the call that declares it: a service declares the queue that takes a
        retired binding's place before the queue that loses it (``add_bus``)."""
        name = queue or self.service
        ch = channel or self._channel
        assert ch is not None
        dead = await ch.declare_queue(
            f"{self.queue_name(name)}.dead", durable=True, arguments=broker.DEAD_QUEUE_ARGUMENTS
        )
        if name not in broker.CONSUMES:
            # The provisioning binds the services' dead-letter queues; a service's user may
            # not read the dlx, so it can't bind a queue to another service's dead letters.
            await dead.bind(self.exchange_name("dlx"), routing_key=name)
            self.keep_bound(dead.name, self.exchange_name("dlx"), name)
        declared = await ch.declare_queue(
            self.queue_name(name),
            durable=True,
            arguments=broker.queue_arguments(self.prefix, name),
        )
        for binding in bindings:
            await declared.bind(
                self.exchange_name(binding.exchange), routing_key=binding.routing_key
            )
            self.keep_bound(
                declared.name, self.exchange_name(binding.exchange), binding.routing_key
            )
        for retired in broker.RETIRED_BINDINGS.get(name, ()):
            if retired in bindings:
                continue
            # Unbinding what isn't bound is no error (RabbitMQ answers unbind-ok).
            await declared.unbind(
                self.exchange_name(retired.exchange), routing_key=retired.routing_key
            )
            log.info(
                "retired_binding_removed", queue=declared.name, routing_key=retired.routing_key
            )
        assert isinstance(declared, aio_pika.RobustQueue)
        return declared

    def keep_bound(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind ``queue`` to ``exchange`` for ``routing_key`` again every
        BINDINGS_CHECK_SECONDS, for as long as the bus is open (BindingKeeper;
        tests/faults/test_exchange_recreated.py)."""
        self._bindings.keep(queue, exchange, routing_key)

    def let_go(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind ``queue`` to ``exchange`` for ``routing_key`` again no more (keep_bound):
        its owner removed the binding on purpose (the mailer's queue, for the lifecycle
        types no webhook endpoint wants). Before its unbind, so no check binds it back."""
        self._bindings.let_go(queue, exchange, routing_key)

    async def consume(
        self,
        pool: asyncpg.Pool,
        bindings: Sequence[Binding],
        handlers: Mapping[str, AnyHandler],
        *,
        prefetch: int = 32,
        alone: Collection[str] = (),
        max_age: timedelta | None = None,
        queue: str | None = None,
    ) -> Consumer:
        """Consume ``bindings`` into the service's queue (``queue``: another of its own,
        ``<prefix>.<queue>``, on a channel and prefetch of its own). The events that arrive together
        share a transaction (group commit), except the types in ``alone``: handlers that
        wait on another service run apart, so that one slow answer doesn't hold back the
        events queued behind it. Each such event runs in a transaction of its own,
        concurrently; those of a ``Together`` handler share a group commit of their own
        (a run of them waits on the other service once, for them all). ``max_age``: how
        long the inbox remembers an event id (``Consumer``)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        assert isinstance(channel, aio_pika.RobustChannel)
        self._consumer_channels.append(channel)
        await channel.set_qos(prefetch_count=prefetch)
        declared = await self.declare_queue(bindings, channel=channel, queue=queue)
        consumer = Consumer(pool, handlers, self.prefix, alone=alone, max_age=max_age)
        consumer.tag = await declared.consume(consumer.on_message)
        consumer.queue = declared
        CONSUMER_CANCELLED.labels(declared.name).set(0)
        consumer.watch = CancelWatch(channel, consumer.tag, consumer.on_cancel_change)
        await consumer.watch.start()
        return consumer


class Consumer:
    """Applies each event once: the inbox row and the effect commit together.

    Unparseable messages, messages from a sender that doesn't own their type, and a
    service's event older than ``max_age`` (how long the inbox remembers an id) are
    dead-lettered at once; a handler that raises is retried (with a growing pause) until
    the quorum queue's delivery limit dead-letters it."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        handlers: Mapping[str, AnyHandler],
        prefix: str,
        *,
        alone: Collection[str] = (),
        max_age: timedelta | None = None,
    ) -> None:
        self.pool = pool
        self.handlers = handlers
        self.prefix = prefix
        self.alone = frozenset(alone)
        self.max_age = max_age
        self.tag: str | None = None
        self.queue: aio_pika.abc.AbstractRobustQueue | None = None
        self.watch: CancelWatch | None = None
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # The messages that arrived while the last transaction ran go in one (group
        # commit). If anything fails, that transaction is rolled back and each message is
        # applied on its own, so a failure stays with its message.
        self._apply = GroupCommit(
            self._apply_all, max_batch=APPLY_BATCH, redo_alone_if=lambda exc: True
        )
        # The events of a Together handler in ``alone``: together, but apart from the rest.
        self._apply_apart = GroupCommit(
            self._apply_all, max_batch=APPLY_BATCH, redo_alone_if=lambda exc: True
        )
        self.acks = Acks()

    @property
    def cancelled(self) -> bool:
        """The broker cancelled this consumer and it does not consume again yet."""
        return self.watch is not None and self.watch.cancelled

    def on_cancel_change(self, cancelled: bool) -> None:
        queue = self.queue.name if self.queue is not None else None
        CONSUMER_CANCELLED.labels(queue or "").set(1 if cancelled else 0)
        if cancelled:
            # Until aio-pika can declare the queue again (while someone else's queue of the
            # same name, with other arguments, stands there: never), nothing is consumed.
            log.error("consumer_cancelled", queue=queue, reason="cancelled by the broker")
        else:
            log.info("consumer_resumed", queue=queue)

    async def stop(self, timeout: float = 10.0, *, cancel: bool = True) -> None:
        """Stop taking messages and wait for the current ones to finish. ``cancel=False``
        when the broker reads nothing from the connection (blocked): the cancel would go
        unanswered, and a blocked broker delivers no more than the unacknowledged
        prefetch, which the connection's close hands back."""
        if cancel and self.queue is not None and self.tag is not None:
            try:
                await self.queue.cancel(self.tag, timeout=CLOSE_SECONDS)
            except Exception as exc:  # the channel may already be gone, or the broker mute
                log.warning("consumer_cancel_failed", error=type(exc).__name__)
        if self.watch is not None:
            await self.watch.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("consumer_stop_timeout", in_flight=self.in_flight)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self._idle.clear()
        try:
            # The publisher's trace goes on here (and, through the outbox, beyond).
            with tracing.span(
                f"process {message.routing_key}",
                SpanKind.CONSUMER,
                {
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": message.exchange or "",
                    "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
                    "messaging.message.id": message.message_id or "",
                },
                incoming=message.headers or {},
            ):
                await self._handle(message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        set_actor(None)  # what a consumer writes is the system's doing, not a person's
        set_sender(message.user_id)
        try:
            judged = await self._judge(message)
        except Exception as exc:
            # A check before the handler met what it never expected (the NUL walk's
            # RecursionError on a request nested 1,000 deep was one): dead-lettered with
            # its reason. Let out, it left the message unacknowledged for good, holding a
            # prefetch slot, and enough such messages stopped the consumer.
            log.exception("event_check_failed", error=type(exc).__name__)
            await self._dead_letter(message, message.type or "unknown", type(exc).__name__)
            return
        if judged is not None:
            await self._apply_and_settle(message, *judged)

    async def _judge(
        self, message: AbstractIncomingMessage
    ) -> tuple[Envelope, AnyHandler, EventData] | None:
        """The event, its handler and its data, when the message is one to apply; None
        when it was settled here (refused, dead-lettered, or acknowledged unwanted)."""
        if _too_large(message, f"{self.prefix}.mail"):
            await self._refuse_too_large(message)
            return None
        try:
            envelope = parse_envelope(message.body)
        except MalformedEvent as exc:
            await self._dead_letter(message, message.type or "unknown", _unread(message, exc))
            return None
        structlog.contextvars.bind_contextvars(event_type=envelope.type, event_id=str(envelope.id))
        set_correlation_id(envelope.correlation_id)
        if not trusted_sender(self.prefix, envelope, message):
            EVENTS_DEAD_LETTERED.labels(type_label(envelope.type), "untrusted_sender").inc()
            EVENTS_CONSUMED.labels(type_label(envelope.type), "refused").inc()
            await self._reject(message)
            return None
        handler = self.handlers.get(envelope.type)
        if handler is None or (
            isinstance(handler, Together)
            and handler.wants is not None
            and not handler.wants(envelope)
        ):
            EVENTS_CONSUMED.labels(type_label(envelope.type), "ignored").inc()
            await self._ack(message)
            return None
        if self.max_age is not None and stale(envelope, self.max_age):
            log.error(
                "event_stale",
                sender=message.user_id,
                occurred_at=envelope.occurred_at.isoformat(),
                message_id=message.message_id,
                max_age_hours=self.max_age.total_seconds() / 3600,
            )
            EVENTS_DEAD_LETTERED.labels(type_label(envelope.type), "stale").inc()
            EVENTS_CONSUMED.labels(type_label(envelope.type), "stale").inc()
            await self._reject(message)
            return None
        try:
            data = parse_data(envelope)
        except MalformedEvent as exc:
            await self._dead_letter(message, envelope.type, str(exc))
            return None
        return envelope, handler, data

    async def _apply_and_settle(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope,
        handler: AnyHandler,
        data: EventData,
    ) -> None:
        try:
            fresh = await self._apply_patiently(envelope, handler, data)
        except Exception as exc:
            deliveries = _delivery_count(message)
            # The quorum queue dead-letters a message returned once its count of earlier
            # deliveries has reached the limit: MAX_DELIVERIES + 1 tries in all.
            outcome = "dead_lettered" if deliveries >= MAX_DELIVERIES else "retry"
            log.exception(
                "event_handler_failed",
                deliveries=deliveries + 1,
                outcome=outcome,
                error=type(exc).__name__,
            )
            if outcome == "dead_lettered":
                EVENTS_DEAD_LETTERED.labels(type_label(envelope.type), "handler_failed").inc()
            EVENTS_CONSUMED.labels(type_label(envelope.type), "failed").inc()
            # Pause before handing it back, so a failing dependency isn't hammered.
            await asyncio.sleep(min(0.2 * 2**deliveries, 5.0))
            await message.nack(requeue=True)
            self._settled(message)
            return
        outcome = "applied" if fresh else "duplicate"
        EVENTS_CONSUMED.labels(type_label(envelope.type), outcome).inc()
        if not fresh:
            log.info("event_duplicate_skipped")
        await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        """Acknowledge with the others that finish in this turn of the loop (libs/common/acks)."""
        assert message.delivery_tag is not None  # consumed with acknowledgements
        await self.acks.of(message.channel).ack(message.delivery_tag)

    async def _reject(self, message: AbstractIncomingMessage) -> None:
        """Dead-letter at once (the queue's dead-letter exchange takes it)."""
        await message.reject(requeue=False)
        self._settled(message)

    def _settled(self, message: AbstractIncomingMessage) -> None:
        assert message.delivery_tag is not None
        self.acks.of(message.channel).settled(message.delivery_tag)

    async def _apply_patiently(
        self, envelope: Envelope, handler: AnyHandler, data: EventData
    ) -> bool:
        # The message's context (correlation id, log fields, trace) goes with it into the
        # shared transaction, where its handler runs.
        applying = (envelope, handler, data, contextvars.copy_context())
        waited, pause = 0.0, 0.2
        while True:
            try:
                if envelope.type in self.alone:
                    if isinstance(handler, Together):
                        return await self._apply_apart(applying)
                    [applied] = await self._apply_all([applying])
                    return applied
                return await self._apply(applying)
            except DEPENDENCY_AWAY as exc:
                if waited >= DEPENDENCY_PATIENCE_SECONDS:
                    raise
                log.warning("event_dependency_away", error=type(exc).__name__, waited=waited)
                await asyncio.sleep(pause)
                waited, pause = round(waited + pause, 1), min(pause * 2, 5.0)

    async def _apply_all(self, batch: Sequence[Applying]) -> list[bool]:
        """The messages in one transaction: their inbox rows in one statement, then each
        handler in turn. For each: True when applied now, False for a duplicate."""
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = {
                row["event_id"]
                for row in await conn.fetch(
                    "INSERT INTO inbox (event_id, event_type)"
                    " SELECT * FROM unnest($1::uuid[], $2::text[])"
                    " ON CONFLICT DO NOTHING RETURNING event_id",
                    [envelope.id for envelope, _, _, _ in batch],
                    [envelope.type for envelope, _, _, _ in batch],
                )
            }
            applied: list[bool] = []
            to_apply: list[Applying] = []
            for applying in batch:
                event_id = applying[0].id
                now = event_id in fresh
                fresh.discard(event_id)  # the same event twice in one batch: once
                applied.append(now)
                if now:
                    to_apply.append(applying)
            # A run of events for one Together handler goes in one call, in the first's
            # context; any other handler's event ends the run, so the order holds.
            for handler, group in groupby(to_apply, key=_run_key):
                run = list(group)
                context = run[0][3]
                if isinstance(handler, Together):
                    events = [(envelope, data) for envelope, _, data, _ in run]
                    arrived = {envelope.id: each for envelope, _, _, each in run}
                    await asyncio.create_task(
                        _apply_run(handler, conn, events, arrived), context=context
                    )
                else:
                    [(envelope, one, data, _)] = run
                    assert not isinstance(one, Together)
                    await asyncio.create_task(_handle(one, conn, envelope, data), context=context)
        return applied

    async def _refuse_too_large(self, message: AbstractIncomingMessage) -> None:
        # Unparsed: a 100 MB body made a parse of several hundred MB (a pod's memory limit
        # passed), and its extra fields were ignored, so it was acted on.
        log.error(
            "event_too_large_dead_lettered",
            reason="too_large",
            size=len(message.body),
            limit=broker.MAX_EVENT_BYTES,
            routing_key=message.routing_key,
            message_id=message.message_id,
            sender=message.user_id,
        )
        event_type = type_label(message.routing_key or "")
        EVENTS_DEAD_LETTERED.labels(event_type, "too_large").inc()
        EVENTS_CONSUMED.labels(event_type, "too_large").inc()
        await self._reject(message)

    async def _dead_letter(self, message: AbstractIncomingMessage, type: str, why: str) -> None:
        # The broker-checked user_id names who to call about it (a buggy integration).
        log.error(
            "event_malformed_dead_lettered",
            reason=why,
            message_id=message.message_id,
            sender=message.user_id,
        )
        EVENTS_DEAD_LETTERED.labels(type_label(type), "malformed").inc()
        EVENTS_CONSUMED.labels(type_label(type), "malformed").inc()
        await self._reject(message)


async def _bounded(what: str, closing: Awaitable[object]) -> None:
    """Await a close for ``CLOSE_SECONDS`` at most; past that, aiormq drops it locally."""
    try:
        await asyncio.wait_for(closing, CLOSE_SECONDS)
    except TimeoutError:
        log.warning("broker_close_timeout", closing=what, seconds=CLOSE_SECONDS)


async def _handle(handler: Handler, conn: Conn, envelope: Envelope, data: EventData) -> None:
    await handler(conn, envelope, data)


async def _apply_run(
    handler: Together[Conn],
    conn: Conn,
    events: Sequence[Event],
    arrived: Mapping[UUID, contextvars.Context],
) -> None:
    _RUN_CONTEXTS.set(arrived)
    await handler.apply(conn, events)


def _run_key(applying: Applying) -> object:
    """What groups consecutive events into one call: their Together handler; any other
    event stands alone."""
    handler = applying[1]
    return handler if isinstance(handler, Together) else id(applying)


def stale(envelope: Envelope, max_age: timedelta, now: datetime | None = None) -> bool:
    """Whether a service's event is older than the inbox remembers ids: it may have been
    applied and forgotten, and brought back since (a publisher's own queue can dead-letter
    what it read into the events exchange, its owner's user_id intact). Commands from other
    systems are not judged by age: their idempotency keys are kept for good. Nor are mail
    jobs here: a late email (a mailer down for a week) beats a lost one, and the mailer
    judges them against how long it keeps mail ids (MAILER_RETENTION_DAYS). Nor is an
    erasure's mail.forget: applied twice, it forgets nothing more."""
    if (
        envelope.type in (broker.MAIL_JOB, broker.MAIL_FORGET)
        or broker.owners(envelope.type) is None
    ):
        return False
    occurred_at = envelope.occurred_at
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return (now or datetime.now(UTC)) - occurred_at > max_age


def trusted_sender(prefix: str, envelope: Envelope, message: AbstractIncomingMessage) -> bool:
    """Whether the broker-vouched sender owns this event type (libs/common/broker.py);
    a refusal is logged with the sender's name."""
    problem = broker.sender_problem(
        prefix, envelope.type, message.routing_key or "", message.user_id
    )
    if problem is None:
        return True
    log.error(
        "event_sender_refused",
        sender=message.user_id,
        event_type=envelope.type,
        routing_key=message.routing_key,
        correlation_id=envelope.correlation_id,
        message_id=message.message_id,
        reason=problem,
    )
    return False


def _too_large(message: AbstractIncomingMessage, mail_exchange: str) -> bool:
    """A message on the public events exchange over ``MAX_EVENT_BYTES``. Mail jobs (the
    mail exchange, which only identity and invitations may write) pack up to 1000 jobs
    in one message: the broker's ``max_message_size`` bounds them."""
    return message.exchange != mail_exchange and len(message.body) > broker.MAX_EVENT_BYTES


# What a sender may name in content_encoding for a compressed body. Bodies are JSON and
# never decompressed (a gzip bomb inflates a thousandfold); the property is not read
# otherwise, so that one which names a charset ("utf-8", as some clients write) does no
# harm, and a dead-lettered compressed body is told by its log line, not by "not UTF-8".
COMPRESSED = frozenset({"gzip", "x-gzip", "deflate", "br", "compress", "zstd", "lz4", "snappy"})


def _unread(message: AbstractIncomingMessage, exc: MalformedEvent) -> str:
    """Why a body is no event, for the dead-letter's log line."""
    encoding = (message.content_encoding or "").strip().lower()
    if encoding in COMPRESSED:
        return f"content_encoding {encoding!r}: a body is read as JSON, never decompressed ({exc})"
    return str(exc)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """The quorum queue's count of earlier deliveries, bounded: the broker sets it, but
    a pause of 2**count seconds must never meet a count nobody could wait for."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return min(max(value, 0), 100) if isinstance(value, int) else 0
