"""A short cache of whose session a cookie is, so a page needn't ask identity every time.

It is only as good as being told when a session ends, so it is used only while it can be
told: identity announces every ended session (``identity.session.revoked``: log out,
password change or reset, user disabled) and each gateway replica listens on a queue of
its own. While that queue is not connected the cache is empty and bypassed (every request
asks identity, as without a cache); a reconnection empties it, because announcements made
during the gap went nowhere. What this replica ends itself (log out, disable, reset) it
forgets before it answers, so the next request never sees the ended session.

An entry lives ``GATEWAY_SESSION_CACHE_SECONDS`` at most, and never past the session's own
idle or absolute expiry; identity still sees an active session at least that often, which
keeps its idle clock and last-seen time current. ``0`` turns the cache off."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import Counter

from libs.common.events import MalformedEvent, SessionRevoked, parse_data, parse_envelope
from libs.common.logging import get_logger

log = get_logger(__name__)

SESSION_CACHE = Counter(
    "clientpress_gateway_session_cache_total",
    "Session lookups by the gateway: hit (from the cache), miss (asked identity and"
    " cached), bypass (asked identity; the cache is off or not connected)",
    ["result"],
)
MAX_ENTRIES = 100_000
RECONNECT_SECONDS = 5.0

Json = dict[str, Any]


@dataclass(frozen=True)
class _Entry:
    current: Json
    user_id: str
    session_id: str
    until: float


def _key(token: str) -> str:
    # Tokens are not kept as keys: a heap dump shows digests, not live cookies.
    return hashlib.sha256(token.encode()).hexdigest()


class SessionCache:
    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.clock = clock
        self.live = False
        # Bumped by every forgetting: an answer fetched before one is not cached after it.
        self.generation = 0
        self._entries: dict[str, _Entry] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.live

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Json | None:
        if not self.enabled:
            SESSION_CACHE.labels("bypass").inc()
            return None
        key = _key(token)
        entry = self._entries.get(key)
        if entry is None:
            SESSION_CACHE.labels("miss").inc()
            return None
        if entry.until <= self.clock():
            del self._entries[key]
            SESSION_CACHE.labels("miss").inc()
            return None
        SESSION_CACHE.labels("hit").inc()
        return entry.current

    def put(self, token: str, current: Json, generation: int) -> None:
        """Remember identity's answer, unless something was forgotten since it was asked
        (it may be the very session being ended)."""
        if not self.enabled or generation != self.generation:
            return
        try:
            user_id = str(current["user"]["id"])
            session = current["session"]
            session_id = str(session["id"])
            ends = min(
                datetime.fromisoformat(session["idle_expires_at"]),
                datetime.fromisoformat(session["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return
        left = (ends - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            # Oldest first (dicts keep insertion order).
            self._entries.pop(next(iter(self._entries)))
        until = self.clock() + min(self.ttl, left)
        self._entries[_key(token)] = _Entry(current, user_id, session_id, until)

    def forget_token(self, token: str) -> None:
        self.generation += 1
        self._entries.pop(_key(token), None)

    def forget_user(self, user_id: str) -> None:
        self.generation += 1
        for key in [k for k, e in self._entries.items() if e.user_id == user_id]:
            del self._entries[key]

    def forget_session(self, session_id: str) -> None:
        self.generation += 1
        for key in [k for k, e in self._entries.items() if e.session_id == session_id]:
            del self._entries[key]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def set_live(self, live: bool) -> None:
        # Either way the cache starts empty: while it wasn't told, it may be stale.
        self.clear()
        self.live = live

    def apply(self, revoked: SessionRevoked) -> None:
        if revoked.session_id is not None:
            self.forget_session(str(revoked.session_id))
        else:
            self.forget_user(str(revoked.user_id))


class RevocationListener:
    """This replica's own queue of ``identity.session.revoked``: exclusive (gone with the
    connection, so no replica's backlog outlives it), bound to the events exchange."""

    def __init__(self, cache: SessionCache, amqp_url: str, prefix: str) -> None:
        self.cache = cache
        self.amqp_url = amqp_url
        self.prefix = prefix
        self.queue_name = f"{prefix}.gateway.sessions.{uuid.uuid4().hex[:12]}"
        self._connection: AbstractRobustConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background: the gateway serves (without the cache) meanwhile."""
        self._task = asyncio.create_task(self._connect(), name="gateway-session-listener")

    async def stop(self) -> None:
        self.cache.set_live(False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _connect(self) -> None:
        while True:
            try:
                await self._open()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("session_listener_connect_failed", error=type(exc).__name__)
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        await self._connection.close()
                    self._connection = None
                await asyncio.sleep(RECONNECT_SECONDS)

    async def _open(self) -> None:
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": "clientpress-gateway-sessions"},
            timeout=10,
        )
        self._connection = connection
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"{self.prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.queue_name, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="identity.session.revoked")
        await queue.consume(self._on_message, no_ack=True)
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_back)
        self.cache.set_live(True)
        log.info("session_listener_ready", queue=self.queue_name)

    def _on_lost(self, *_: object) -> None:
        if self.cache.live:
            log.warning("session_cache_off", reason="broker connection lost")
        self.cache.set_live(False)

    def _on_back(self, *_: object) -> None:
        self.cache.set_live(True)
        log.info("session_cache_on", reason="broker connection restored")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = parse_envelope(message.body)
            data = parse_data(envelope)
        except MalformedEvent as exc:
            # Can't tell whose session ended: forget them all rather than guess.
            log.warning("session_revocation_unreadable", error=str(exc)[:200])
            self.cache.clear()
            return
        if isinstance(data, SessionRevoked):
            self.cache.apply(data)
