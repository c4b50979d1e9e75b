"""A short cache of what identity and portals vouched for, so a portal page or an API call
needn't ask them every time: whose session a cookie is, a user's portal page (access
included), and which live integration key a bearer key is (its name and scopes).

It is only as good as being told when that changes, so it is used only while it can be
told. Identity announces every ended session (``identity.session.revoked``: log out,
password change or reset, user disabled) and every revoked key
(``identity.key.revoked``), and portals every change of a portal and of its
access list (``portal.updated``, ``portal.access.revoked``); each gateway replica listens
on a queue of its own. While that queue is not connected (the connection lost, or the
broker cancelled its consumer: the queue deleted) the cache is empty and bypassed (every
request asks, as without a cache); a reconnection empties it, because announcements made
during the gap went nowhere. What this replica changes itself (log
out, disable, reset, a portal saved in the editor, a key revoked) it forgets before it
answers, so the next request never sees the old state.

An entry lives ``GATEWAY_CACHE_SECONDS`` at most, a session never past its own idle or
absolute expiry; identity still sees an active session (and a key in use) at least that
often, which keeps its idle clock (and the key's last use) current. Only answers that
grant something are kept (never a 404 or a refused key), so a new grant shows at once.
``0`` turns the cache off.

It holds at most ``MAX_ENTRIES`` answers and ``GATEWAY_CACHE_MAX_BYTES`` of them (their
objects' sizes, roughly what they take in memory), the oldest dropped first: a portal page
is kept per client, and its content can be a few hundred kilobytes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import Counter, Gauge

from libs.common import amqp_decode
from libs.common.broker import sender_problem
from libs.common.bus import BindingKeeper, CancelWatch, trusted_sender
from libs.common.events import (
    ApiKeyChanged,
    BrandingChanged,
    EventData,
    MalformedEvent,
    PortalAccessChanged,
    PortalChanged,
    SessionRevoked,
    UserDisabled,
    UserErased,
    UserPreferencesChanged,
    UserRoleChanged,
    parse_data,
    parse_envelope,
)
from libs.common.logging import get_logger
from libs.common.metrics import BROKER_CONNECTED

from .answers import ApiKeyAnswer, BrandingAnswer, CurrentSession, PortalAnswer

log = get_logger(__name__)

CACHE_LOOKUPS = Counter(
    "clientpress_gateway_cache_total",
    "Gateway lookups of sessions, portal pages, the branding and integration keys: hit"
    " (from the cache), miss (asked and cached), bypass (asked; the cache is off or not"
    " connected)",
    ["kind", "result"],
)
CACHE_BYTES = Gauge(
    "clientpress_gateway_cache_bytes",
    "What the gateway's cache holds now, as it counts it against GATEWAY_CACHE_MAX_BYTES",
)
CACHE_ENTRIES = Gauge(
    "clientpress_gateway_cache_entries", "How many answers the gateway's cache holds now"
)
MAX_ENTRIES = 100_000
# GATEWAY_CACHE_MAX_BYTES' default: an eighth of the 256 MiB a replica is given
# (deploy/k8s). Room for about 16,000 session answers (2 KB each as _size counts them) or
# 70 pages of the longest Content in any script (480 KB), put within one TTL.
MAX_BYTES = 32 * 1024 * 1024
# A key in use is checked with identity again at least this often, whatever the TTL: its
# last use (the API keys screen) stays current to within a minute or two.
KEY_SECONDS = 60.0
RECONNECT_SECONDS = 5.0
# What the listener hears; each names whose entries to forget (the branding: all of it).
ROUTING_KEYS = (
    "identity.session.revoked",
    "identity.user.disabled",
    "identity.user.erased",
    "identity.user.role_changed",
    "identity.user.preferences_changed",
    "identity.key.revoked",
    "portal.updated",
    "portal.access.revoked",
    "settings.branding.changed",
)


@dataclass(frozen=True)
class _Entry:
    value: Any  # an answer as identity, portals or the mailer gave it
    tags: frozenset[str]
    until: float
    size: int  # bytes, as _size counts them


def _size(value: object) -> int:
    """Roughly the memory ``value`` holds: its objects' own sizes, its dicts and lists
    followed (an answer is decoded JSON: strings, numbers, dicts and lists). What it shares
    with other entries (a dict's keys) is counted in each, so the budget errs on the safe
    side."""
    size = sys.getsizeof(value)
    # The leaves sized in place: a session answer in 6 µs, not 14 (a put on every miss).
    if isinstance(value, dict):
        for key, item in value.items():
            size += sys.getsizeof(key)
            size += _size(item) if isinstance(item, dict | list) else sys.getsizeof(item)
    elif isinstance(value, list | tuple | frozenset | set):
        for item in value:
            size += _size(item) if isinstance(item, dict | list) else sys.getsizeof(item)
    return size


def _digest(token: str) -> str:
    # Tokens are not kept as keys: a heap dump shows digests, not live cookies.
    return hashlib.sha256(token.encode()).hexdigest()


class GatewayCache:
    def __init__(
        self,
        ttl_seconds: float,
        *,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_bytes = max_bytes
        self.clock = clock
        # What the entries hold, as _size counts it: at most max_bytes.
        self.size_bytes = 0
        self.live = False
        # Bumped by every forgetting: an answer asked for before one is not kept after it.
        self.generation = 0
        # Oldest first. An OrderedDict: a dict's first item, after many dropped from the
        # front, is found past their empty slots (12 µs a put, not 7, at 1,000 puts a second).
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        # tag ("user:…", "session:…", "portal:…", "key:…") -> keys, so forgetting one
        # user's or one portal's entries doesn't scan the whole cache.
        self._tagged: dict[str, set[str]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.live

    def measured(self) -> GatewayCache:
        """This cache is the one ``clientpress_gateway_cache_bytes`` and ``_entries``
        report: read at each scrape, not set at each put."""
        CACHE_BYTES.set_function(lambda: self.size_bytes)
        CACHE_ENTRIES.set_function(lambda: len(self._entries))
        return self

    def __len__(self) -> int:
        return len(self._entries)

    # --- sessions ---------------------------------------------------------------------
    def session(self, token: str) -> CurrentSession | None:
        found: CurrentSession | None = self._get("session", "s:" + _digest(token))
        return found

    def put_session(self, token: str, current: CurrentSession, generation: int) -> None:
        """Keep identity's answer about a session cookie, never past the session's end."""
        try:
            user_id = str(current["user"]["id"])
            session = current["session"]
            ends = min(
                datetime.fromisoformat(session["idle_expires_at"]),
                datetime.fromisoformat(session["expires_at"]),
            )
            tags = frozenset({f"user:{user_id}", f"session:{session['id']}"})
            left = (ends - datetime.now(UTC)).total_seconds()
        except (KeyError, TypeError, ValueError):
            return
        self._put("s:" + _digest(token), current, tags, left, generation)

    # --- portal pages -----------------------------------------------------------------
    def portal(self, user_id: str, slug: str) -> PortalAnswer | None:
        found: PortalAnswer | None = self._get("portal", f"p:{user_id}:{slug}")
        return found

    def put_portal(self, user_id: str, slug: str, portal: PortalAnswer, generation: int) -> None:
        """Keep a page portals showed this user: one of theirs (a portal that isn't Active
        comes without its content, and its status change is announced like any other)."""
        try:
            tags = frozenset({f"user:{user_id}", f"portal:{portal['id']}"})
        except (KeyError, TypeError):
            return
        self._put(f"p:{user_id}:{slug}", portal, tags, self.ttl, generation)

    # --- branding (the mailer's Settings → Branding, on every page) -------------------
    def branding(self) -> BrandingAnswer | None:
        found: BrandingAnswer | None = self._get("branding", "b")
        return found

    def put_branding(self, branding: BrandingAnswer, generation: int) -> None:
        self._put("b", branding, frozenset({"branding"}), self.ttl, generation)

    def forget_branding(self) -> None:
        self._forget("branding")

    # --- integration keys (an /api call's bearer key) ---------------------------------
    def api_key(self, key: str) -> ApiKeyAnswer | None:
        found: ApiKeyAnswer | None = self._get("api_key", "k:" + _digest(key))
        return found

    def put_api_key(self, key: str, answer: ApiKeyAnswer, generation: int) -> None:
        """Keep identity's answer that a presented key is live (never a refusal: a key made
        a moment later is not refused from the cache)."""
        try:
            tags = frozenset({f"key:{answer['id']}"})
        except (KeyError, TypeError):
            return
        self._put("k:" + _digest(key), answer, tags, KEY_SECONDS, generation)

    def forget_api_key(self, key_id: str) -> None:
        self._forget(f"key:{key_id}")

    # --- forgetting -------------------------------------------------------------------
    def forget_token(self, token: str) -> None:
        self.generation += 1
        self._drop("s:" + _digest(token))

    def forget_user(self, user_id: str) -> None:
        self._forget(f"user:{user_id}")

    def forget_session(self, session_id: str) -> None:
        self._forget(f"session:{session_id}")

    def forget_portal(self, portal_id: str) -> None:
        self._forget(f"portal:{portal_id}")

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._tagged.clear()
        self.size_bytes = 0

    def set_live(self, live: bool) -> None:
        # Either way the cache starts empty: while it wasn't told, it may be stale.
        self.clear()
        self.live = live

    def apply(self, data: EventData) -> None:
        """Forget what an announcement says has changed."""
        if isinstance(data, SessionRevoked):
            if data.session_id is not None:
                self.forget_session(str(data.session_id))
            else:
                self.forget_user(str(data.user_id))
        elif isinstance(data, UserDisabled | UserErased | UserRoleChanged | UserPreferencesChanged):
            self.forget_user(str(data.user_id))
        elif isinstance(data, PortalChanged | PortalAccessChanged):
            self.forget_portal(str(data.portal_id))
        elif isinstance(data, BrandingChanged):
            self.forget_branding()
        elif isinstance(data, ApiKeyChanged):
            self.forget_api_key(str(data.key_id))

    # --- the store --------------------------------------------------------------------
    def _get(self, kind: str, key: str) -> Any:
        if not self.enabled:
            CACHE_LOOKUPS.labels(kind, "bypass").inc()
            return None
        entry = self._entries.get(key)
        if entry is not None and entry.until > self.clock():
            CACHE_LOOKUPS.labels(kind, "hit").inc()
            return entry.value
        if entry is not None:
            self._drop(key)
        CACHE_LOOKUPS.labels(kind, "miss").inc()
        return None

    def _put(
        self, key: str, value: object, tags: frozenset[str], left: float, generation: int
    ) -> None:
        # Not kept if something was forgotten since it was asked for: it may be the very
        # session or access being ended.
        if not self.enabled or generation != self.generation or left <= 0:
            return
        self._drop(key)
        size = _size(key) + _size(value) + _size(tags)
        if size > self.max_bytes:
            return  # would push out everything else, and still not fit
        now = self.clock()
        self._drop_expired(now)
        # Oldest first, until both the count and the bytes leave room for this one.
        while self._entries and (
            len(self._entries) >= MAX_ENTRIES or self.size_bytes + size > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(value, tags, now + min(self.ttl, left), size)
        self.size_bytes += size
        for tag in tags:
            self._tagged.setdefault(tag, set()).add(key)

    def _drop_expired(self, now: float) -> None:
        """Drop the expired entries at the front: the oldest first, in the order they were
        put (each lives at most the TTL), so the first one still fresh ends the sweep and
        what stays was all put within the last TTL. Otherwise an expired entry went only
        when its own key was asked for again: a page per client who ever came by."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.until > now:
                return
            self._drop(key)

    def _forget(self, tag: str) -> None:
        self.generation += 1
        for key in list(self._tagged.get(tag, ())):
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.size_bytes -= entry.size
        for tag in entry.tags:
            keys = self._tagged.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tagged[tag]


class ChangeListener:
    """This replica's own queue of the announcements in ROUTING_KEYS: exclusive (gone with
    the connection, so no replica's backlog outlives it), bound to the events exchange."""

    def __init__(self, cache: GatewayCache, amqp_url: str, prefix: str) -> None:
        self.cache = cache
        self.amqp_url = amqp_url
        self.prefix = prefix
        self.queue_name = f"{prefix}.gateway.cache.{uuid.uuid4().hex[:12]}"
        self._connection: AbstractRobustConnection | None = None
        self._watch: CancelWatch | None = None
        self._task: asyncio.Task[None] | None = None
        # The queue's bindings made again every BINDINGS_CHECK_SECONDS: an events exchange
        # deleted and declared again by hand is back without them, and no announcement
        # would reach this replica again (tests/faults/test_exchange_recreated_cache.py).
        self._bindings = BindingKeeper(lambda: self._connection, self._on_bindings)

    def start(self) -> None:
        """Connect in the background: the gateway serves (without the cache) meanwhile."""
        self._task = asyncio.create_task(self._connect(), name="gateway-cache-listener")

    async def stop(self) -> None:
        self._set_connected(False)
        await self._bindings.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._watch is not None:
            await self._watch.close()
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
                log.warning("cache_listener_connect_failed", error=type(exc).__name__)
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        await self._connection.close()
                    self._connection = None
                await asyncio.sleep(RECONNECT_SECONDS)

    async def _open(self) -> None:
        # Anyone who may write on the events exchange can route a message here: what it
        # puts in the properties must not close the connection (libs/common/amqp_decode.py).
        amqp_decode.install()
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": "clientpress-gateway-cache"},
            timeout=10,
        )
        self._connection = connection
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"{self.prefix}.events", passive=True)
        queue = await channel.declare_queue(self.queue_name, exclusive=True, auto_delete=True)
        for key in ROUTING_KEYS:
            await queue.bind(exchange, routing_key=key)
            self._bindings.keep(queue.name, exchange.name, key)
        tag = await queue.consume(self._on_message, no_ack=True)
        assert isinstance(channel, aio_pika.RobustChannel)
        self._watch = CancelWatch(channel, tag, self._on_cancel_change)
        await self._watch.start()
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_back)
        self._set_connected(True)
        log.info("cache_listener_ready", queue=self.queue_name)

    def _on_cancel_change(self, cancelled: bool) -> None:
        """The broker cancelled the listener (its queue deleted): aio-pika declares the
        queue and consumes again by itself, but what was announced meanwhile went nowhere.
        Off until it consumes again, then on, empty, as after a lost connection."""
        if cancelled:
            log.warning("gateway_cache_off", reason="the broker cancelled the listener")
            self.cache.set_live(False)
        else:
            self.cache.set_live(True)
            log.info("gateway_cache_on", reason="the listener consumes again")

    def _on_bindings(self, bound: bool) -> None:
        """The events exchange is gone (a bind refused) or bound again: off meanwhile,
        on and empty after, as across a lost connection."""
        if bound:
            self.cache.set_live(True)
            log.info("gateway_cache_on", reason="the listener's queue is bound again")
        else:
            log.warning("gateway_cache_off", reason="the events exchange is missing")
            self.cache.set_live(False)

    def _set_connected(self, up: bool) -> None:
        # The gateway's only broker connection is this one: clientpress_broker_connected
        # says whether it is up, as every other service's says of its bus (an alert pages
        # on 0).
        self.cache.set_live(up)
        BROKER_CONNECTED.set(1 if up else 0)

    def _on_lost(self, *_: object) -> None:
        if self.cache.live:
            log.warning("gateway_cache_off", reason="broker connection lost")
        self._set_connected(False)

    def _on_back(self, *_: object) -> None:
        self._set_connected(True)
        log.info("gateway_cache_on", reason="broker connection restored")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = parse_envelope(message.body)
        except MalformedEvent as exc:
            # Anyone who may write on the events exchange can route a message here: only
            # the owner's unreadable announcement is a reason to forget.
            if self._from_owner(message):
                self._unreadable(exc)
            return
        if not trusted_sender(self.prefix, envelope, message):
            return  # a forged announcement: neither applied nor a reason to forget
        try:
            data = parse_data(envelope)
        except MalformedEvent as exc:
            self._unreadable(exc)
            return
        self.cache.apply(data)

    def _from_owner(self, message: AbstractIncomingMessage) -> bool:
        """Whether the broker-vouched sender owns the message's routing key."""
        key = message.routing_key or ""
        problem = sender_problem(self.prefix, key, key, message.user_id)
        if problem is not None:
            log.error(
                "event_sender_refused",
                sender=message.user_id,
                routing_key=key,
                message_id=message.message_id,
                reason=problem,
            )
        return problem is None

    def _unreadable(self, exc: MalformedEvent) -> None:
        # Can't tell what changed: forget everything rather than guess.
        log.warning("gateway_cache_announcement_unreadable", error=str(exc)[:200])
        self.cache.clear()
