"""The gateway's session cache: what it keeps, for how long, and how it is told to forget
(its own calls, identity's announcements on the run's real broker, a lost connection)."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from libs.common import broker
from libs.common.events import (
    ApiKeyChanged,
    EventData,
    PortalAccessChanged,
    PortalChanged,
    SessionRevoked,
    UserDisabled,
    UserPreferencesChanged,
    make_event,
)
from services.gateway.app import create_app
from services.gateway.cache import GatewayCache
from services.gateway.settings import GatewaySettings
from services.gateway.state import CACHE
from tests.gateway.conftest import csrf, log_in, make_settings, post_form
from tests.gateway.fakes import Backend
from tests.support.env import TestEnv
from tests.support.owners import OwnersBus
from tests.support.servers import current as current_servers

PASSWORD = "correct horse battery staple"
BOOTSTRAP_KEY = "bootstrap-" + uuid.uuid4().hex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(user_id: str, session_id: str, ends_in: timedelta = timedelta(hours=2)) -> Any:
    ends = (datetime.now(UTC) + ends_in).isoformat()
    return {
        "user": {"id": user_id, "email": "c@example.com", "role": "client"},
        "session": {"id": session_id, "expires_at": ends, "idle_expires_at": ends},
    }


def live_cache(ttl: float = 10.0, **options: Any) -> tuple[GatewayCache, Clock]:
    clock = Clock()
    cache = GatewayCache(ttl, clock=clock, **options)
    cache.set_live(True)
    return cache, clock


# --- the cache on its own ---------------------------------------------------------------
def test_keeps_an_answer_for_its_ttl_and_no_longer() -> None:
    cache, clock = live_cache(10)
    current = answer("u1", "s1")
    cache.put_session("tok", current, cache.generation)
    assert cache.session("tok") == current
    clock.now += 9.9
    assert cache.session("tok") == current
    clock.now += 0.2
    assert cache.session("tok") is None
    assert len(cache) == 0


def test_never_outlives_the_session_itself() -> None:
    cache, clock = live_cache(60)
    cache.put_session("tok", answer("u1", "s1", timedelta(seconds=2)), cache.generation)
    assert cache.session("tok") is not None
    clock.now += 2.5
    assert cache.session("tok") is None
    cache.put_session("old", answer("u1", "s2", timedelta(seconds=-1)), cache.generation)
    assert cache.session("old") is None


def test_is_bypassed_when_off_or_not_connected() -> None:
    off = GatewayCache(0)
    off.set_live(True)
    off.put_session("tok", answer("u1", "s1"), off.generation)
    assert off.session("tok") is None
    cache, _ = live_cache()
    cache.put_session("tok", answer("u1", "s1"), cache.generation)
    cache.set_live(False)
    assert cache.session("tok") is None
    cache.put_session("tok", answer("u1", "s1"), cache.generation)
    cache.set_live(True)  # back, but told nothing of the gap: starts empty
    assert cache.session("tok") is None


def test_forgets_by_token_session_and_user() -> None:
    cache, _ = live_cache()
    for token, user, session in (("a", "u1", "s1"), ("b", "u1", "s2"), ("c", "u2", "s3")):
        cache.put_session(token, answer(user, session), cache.generation)
    cache.forget_token("c")
    assert cache.session("c") is None and cache.session("a") is not None
    cache.apply(SessionRevoked(user_id=uuid.uuid4(), session_id=uuid.uuid4()))
    assert cache.session("a") is not None  # someone else's session
    cache.forget_session("s1")
    assert cache.session("a") is None and cache.session("b") is not None
    cache.put_session("a", answer("u1", "s1"), cache.generation)
    user = uuid.uuid4()
    cache.put_session("d", answer(str(user), "s4"), cache.generation)
    cache.apply(SessionRevoked(user_id=user))  # no session id: all of the user's
    assert cache.session("d") is None and cache.session("a") is not None


def test_an_answer_asked_before_a_revocation_is_not_cached_after_it() -> None:
    cache, _ = live_cache()
    asked_at = cache.generation
    cache.forget_user("u1")  # the revocation lands while identity's answer is on its way
    cache.put_session("tok", answer("u1", "s1"), asked_at)
    assert cache.session("tok") is None


def test_holds_no_raw_tokens_and_ignores_odd_answers() -> None:
    cache, _ = live_cache()
    cache.put_session("secret-token-value", answer("u1", "s1"), cache.generation)
    assert "secret-token-value" not in repr(cache.__dict__)
    cache.put_session("odd", {"user": {"id": "u"}}, cache.generation)
    cache.put_session("odder", {"session": {"id": "s", "expires_at": "soon"}}, cache.generation)
    assert cache.session("odd") is None and cache.session("odder") is None


def test_portal_pages_are_forgotten_with_their_portal_or_their_user() -> None:
    cache, clock = live_cache(10)
    page = {"id": "p1", "slug": "acme", "status": "active"}
    cache.put_portal("u1", "acme", page, cache.generation)
    cache.put_portal("u2", "acme", page, cache.generation)
    cache.put_portal("u2", "other", {"id": "p2"}, cache.generation)
    assert cache.portal("u1", "acme") == page
    assert cache.portal("u3", "acme") is None  # keyed by user: no one borrows a page
    cache.forget_portal("p1")
    assert cache.portal("u1", "acme") is None and cache.portal("u2", "acme") is None
    assert cache.portal("u2", "other") is not None
    cache.forget_user("u2")
    assert cache.portal("u2", "other") is None
    cache.put_portal("u1", "acme", page, cache.generation)
    clock.now += 10.1
    assert cache.portal("u1", "acme") is None


def test_expired_answers_do_not_pile_up_until_the_cap() -> None:
    """An expired entry was dropped only when its own key was asked for again, or pushed
    out at MAX_ENTRIES: every client who ever opened a portal left a copy of its page
    (content and HTML, up to 100,000 characters each) in the replica for good. (The pages
    share one content here: a budget of bytes that counts each copy is not what this is
    about.)"""
    cache, clock = live_cache(10, max_bytes=1024**3)
    content = "x" * 10_000
    for n in range(5_000):
        page = {"id": "p1", "slug": "acme", "status": "active", "content_html": content}
        cache.put_portal(f"user-{n}", "acme", page, cache.generation)  # type: ignore[arg-type]
        cache.put_session(f"token-{n}", answer(f"user-{n}", f"s-{n}"), cache.generation)
        clock.now += 0.001
    assert len(cache) == 10_000
    clock.now += 10.1  # every one of them expired; one more client comes by
    cache.put_portal("user-new", "acme", {"id": "p1"}, cache.generation)  # type: ignore[typeddict-item]
    assert len(cache) == 1
    assert cache.portal("user-new", "acme") == {"id": "p1"}
    # What is still fresh stays, whatever came before it.
    clock.now += 5
    cache.put_session("token-new", answer("user-new", "s-new"), cache.generation)
    clock.now += 5.05  # user-new's page is expired, its session not yet
    cache.put_portal("user-other", "acme", {"id": "p1"}, cache.generation)  # type: ignore[typeddict-item]
    assert len(cache) == 2 and cache.session("token-new") is not None


def test_huge_answers_are_held_to_a_budget_of_bytes_not_only_a_count() -> None:
    """The cap was 100,000 entries whatever their size: a portal page of 200,000
    characters per client who came by within the TTL (50 MB for 250 of them, 20 GB at the
    cap) in a replica given 256 MiB. By default the entries hold at most 32 MiB."""
    cache, _ = live_cache(10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(250):
            page = {"id": f"p{n}", "slug": "acme", "content_html": str(n).ljust(200_000, "x")}
            cache.put_portal(f"user-{n}", "acme", page, cache.generation)  # type: ignore[arg-type]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 33 * 1024 * 1024, f"{held:,} bytes held"
    assert cache.portal("user-249", "acme") is not None  # the newest stay
    assert cache.portal("user-0", "acme") is None  # the oldest made room


def test_the_byte_budget_drops_the_oldest_first_and_keeps_nothing_bigger_than_itself() -> None:
    cache = GatewayCache(10, max_bytes=1_000_000)
    cache.set_live(True)
    for n in range(4):
        page = {"id": f"p{n}", "content_html": str(n) * 300_000}
        cache.put_portal(f"u{n}", "acme", page, cache.generation)  # type: ignore[arg-type]
    assert [cache.portal(f"u{n}", "acme") is not None for n in range(4)] == [
        False,
        True,
        True,
        True,
    ]
    assert cache.size_bytes <= 1_000_000
    # An answer over the whole budget is not kept, and pushes nothing out.
    cache.put_portal("big", "acme", {"id": "p9", "content_html": "b" * 1_000_000}, cache.generation)  # type: ignore[arg-type]
    assert cache.portal("big", "acme") is None and len(cache) == 3
    # Whatever way entries leave, their bytes leave with them.
    cache.forget_portal("p3")
    cache.forget_user("u2")
    cache.forget_token("none")
    assert len(cache) == 1 and 300_000 < cache.size_bytes < 400_000
    cache.clear()
    assert cache.size_bytes == 0


def test_the_byte_budget_is_a_setting() -> None:
    assert GatewaySettings().gateway_cache_max_bytes == 32 * 1024 * 1024
    app = create_app(GatewaySettings(gateway_cache_max_bytes=5_000_000))
    assert app[CACHE].max_bytes == 5_000_000


@pytest.mark.parametrize(
    "announcement",
    [
        SessionRevoked(user_id=uuid.UUID(int=1)),
        UserDisabled(user_id=uuid.UUID(int=1)),
        UserPreferencesChanged(user_id=uuid.UUID(int=1), locale="de", time_zone=None),
        PortalChanged(
            portal_id=uuid.UUID(int=7), slug="acme", title="A", status="archived", revision=2
        ),
        PortalAccessChanged(portal_id=uuid.UUID(int=7), user_id=uuid.UUID(int=9)),
    ],
)
def test_each_announcement_forgets_what_it_names(announcement: EventData) -> None:
    cache, _ = live_cache()
    user, portal = str(uuid.UUID(int=1)), str(uuid.UUID(int=7))
    cache.put_portal(user, "acme", {"id": portal}, cache.generation)
    cache.put_portal("someone", "else", {"id": "p-else"}, cache.generation)
    cache.apply(announcement)
    assert cache.portal(user, "acme") is None
    assert cache.portal("someone", "else") is not None


def test_keys_are_kept_for_the_ttl_and_forgotten_by_revocation_or_refusal() -> None:
    cache, clock = live_cache()
    answer: Any = {"id": str(uuid.UUID(int=3)), "name": "CRM", "scopes": ["invitations:write"]}
    other: Any = {"id": str(uuid.UUID(int=4)), "name": "Billing", "scopes": []}
    cache.put_api_key("cpk_one", answer, cache.generation)
    cache.put_api_key("cpk_two", other, cache.generation)
    cache.put_api_key("cpk_odd", {"name": "no id"}, cache.generation)  # type: ignore[typeddict-item]
    assert cache.api_key("cpk_one") == answer and cache.api_key("cpk_odd") is None
    assert not any("cpk_" in key for key in cache._entries)  # digests, never the keys
    clock.now += 9.9
    assert cache.api_key("cpk_one") == answer
    clock.now += 0.2
    assert cache.api_key("cpk_one") is None
    cache.put_api_key("cpk_one", answer, cache.generation)
    cache.put_api_key("cpk_two", other, cache.generation)
    cache.apply(ApiKeyChanged(key_id=uuid.UUID(int=3), name="CRM", scopes=[]))
    assert cache.api_key("cpk_one") is None and cache.api_key("cpk_two") == other
    # Never longer than a minute, whatever the TTL: identity records the key's use.
    long_cache, long_clock = live_cache(ttl=300)
    long_cache.put_api_key("cpk_one", answer, long_cache.generation)
    long_clock.now += 60.1
    assert long_cache.api_key("cpk_one") is None
    # Asked before a revocation, answered after it: not kept.
    generation = cache.generation
    cache.forget_api_key(other["id"])
    cache.put_api_key("cpk_two", other, generation)
    assert cache.api_key("cpk_two") is None


# --- the gateway with the cache on ------------------------------------------------------
@pytest.fixture
async def cached_gw(backend: Backend, test_env: TestEnv) -> AsyncIterator[TestClient]:
    settings = make_settings(
        backend,
        gateway_cache_seconds=30,
        gateway_api_key=BOOTSTRAP_KEY,
        amqp_url=test_env.amqp_url_as("gateway"),
        bus_prefix=test_env.bus_prefix,
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    await eventually(lambda: _true(client.app[CACHE].live), "the listener connected")
    yield client
    await client.close()


async def _true(value: bool) -> bool:
    return value


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def client_with_portal(backend: Backend, gw: TestClient) -> tuple[Any, str]:
    user = backend.add_user(f"c-{uuid.uuid4().hex[:6]}@example.com", PASSWORD)
    portal = backend.add_portal("Cached", client_id=user["id"])
    await log_in(gw, user, PASSWORD)
    return user, f"/client-portal/{portal['slug']}/"


def use_session(gw: TestClient, token: str) -> None:
    """Send this session cookie and no other (a copied cookie, another tab)."""
    gw.session.cookie_jar.clear()
    gw.session.cookie_jar.update_cookies({"cp_session": token}, gw.make_url("/"))


async def answers_soon(gw: TestClient, token: str, path: str, status: int, what: str) -> None:
    """Wait until ``path``, asked with this session cookie, answers ``status``."""

    async def answered() -> bool:
        use_session(gw, token)
        return await status_of(gw, path) == status

    await eventually(answered, what)


async def status_of(gw: TestClient, path: str) -> int:
    response = await gw.get(path, allow_redirects=False)
    await response.read()
    return response.status


@pytest.mark.integration
async def test_pages_ask_identity_once_per_ttl(cached_gw: TestClient, backend: Backend) -> None:
    _, page = await client_with_portal(backend, cached_gw)
    # The session identity issued at log in is kept: the pages after it don't ask.
    before = backend.current_calls
    for _ in range(5):
        assert await status_of(cached_gw, page) == 200
    assert backend.current_calls - before == 0
    # Once the cache is emptied (here: the broker connection came back), it asks once.
    cached_gw.app[CACHE].set_live(True)
    for _ in range(5):
        assert await status_of(cached_gw, page) == 200
    assert backend.current_calls - before == 1


@pytest.mark.integration
async def test_the_metrics_say_what_the_cache_holds(
    cached_gw: TestClient, backend: Backend
) -> None:
    """``clientpress_gateway_cache_bytes`` and ``_entries``: what the byte budget
    (GATEWAY_CACHE_MAX_BYTES) is spent on, read from the app's own cache at each scrape."""
    _, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    cache = cached_gw.app[CACHE]
    held = REGISTRY.get_sample_value("clientpress_gateway_cache_bytes")
    entries = REGISTRY.get_sample_value("clientpress_gateway_cache_entries")
    assert held == cache.size_bytes > 0
    assert entries == len(cache) >= 2  # the session and the portal page
    cache.set_live(True)  # emptied
    assert REGISTRY.get_sample_value("clientpress_gateway_cache_bytes") == 0
    assert REGISTRY.get_sample_value("clientpress_gateway_cache_entries") == 0


async def test_the_page_a_change_redirects_to_asks_identity_afresh(
    cached_gw: TestClient, backend: Backend
) -> None:
    """Another replica saved the user's Language and redirected here before its
    announcement arrived: the page carrying the change's flash message shows it anyway."""
    user, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    user["locale"] = "de"  # saved through another replica; this one wasn't told yet
    before = backend.current_calls
    stale = await (await cached_gw.get("/account")).text()
    assert '<html lang="en">' in stale and backend.current_calls == before
    cached_gw.session.cookie_jar.update_cookies(
        {"cp_flash": "account_saved|"}, cached_gw.make_url("/")
    )
    fresh = await cached_gw.get("/account")
    assert '<html lang="de">' in await fresh.text()
    assert "Ihre Sprache und Zeitzone sind gespeichert." in await fresh.text()
    assert backend.current_calls == before + 1
    # The fresh answer is the one kept: the next pages are German from the cache.
    after = await (await cached_gw.get("/account")).text()
    assert '<html lang="de">' in after and backend.current_calls == before + 1


@pytest.mark.integration
async def test_logging_out_here_ends_the_session_at_once(
    cached_gw: TestClient, backend: Backend
) -> None:
    _, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    token = cached_gw.session.cookie_jar.filter_cookies(cached_gw.make_url("/"))["cp_session"]
    response = await post_form(cached_gw, "/logout")
    assert response.status == 303
    use_session(cached_gw, token.value)  # the old cookie, sent again: refused
    assert await status_of(cached_gw, page) == 303


@pytest.mark.integration
async def test_disabling_here_ends_the_users_sessions_at_once(
    cached_gw: TestClient, backend: Backend
) -> None:
    admin = backend.add_user("root@example.com", PASSWORD, role="administrator")
    user, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    client_cookie = cached_gw.session.cookie_jar.filter_cookies(cached_gw.make_url("/"))
    await log_in(cached_gw, admin, PASSWORD)  # the admin, in the same browser for brevity
    response = await post_form(cached_gw, f"/admin/users/{user['id']}/disable")
    assert response.status == 303
    use_session(cached_gw, client_cookie["cp_session"].value)
    assert await status_of(cached_gw, page) == 303


async def _announce(
    test_env: TestEnv, event_type: str, data: EventData, *, as_owner: bool = True
) -> None:
    """Publish as the event type's owner, or (``as_owner=False``) as another program."""
    envelope = make_event(event_type, data, source="test")
    if as_owner:
        owners = OwnersBus(test_env)
        await owners.connect()
        try:
            await owners.publish_envelope(envelope)
        finally:
            await owners.close()
        return
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{test_env.bus_prefix}.events")
        await exchange.publish(
            aio_pika.Message(envelope.to_json(), content_type="application/json"),
            routing_key=envelope.type,
        )
    finally:
        await connection.close()


@pytest.mark.integration
async def test_a_revocation_announced_by_identity_reaches_the_cache(
    cached_gw: TestClient, backend: Backend, test_env: TestEnv
) -> None:
    """Ended elsewhere (another replica, identity itself): the announcement empties it."""
    user, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    token = cached_gw.session.cookie_jar.filter_cookies(cached_gw.make_url("/"))["cp_session"]
    backend.sessions.pop(token.value)  # identity ended it, and the gateway wasn't asked
    assert await status_of(cached_gw, page) == 200  # still cached: nobody said
    await _announce(
        test_env,
        "identity.session.revoked",
        SessionRevoked(
            user_id=uuid.UUID(user["id"]),
            session_id=uuid.UUID(backend.session_id(token.value)),
            reason="logout",
        ),
    )
    await answers_soon(cached_gw, token.value, page, 303, "the announced revocation to apply")


async def api_status(gw: TestClient, key: str, method: str = "GET", path: str = "") -> int:
    response = await gw.request(
        method, path or "/api/v1/portals", headers={"Authorization": f"Bearer {key}"}
    )
    await response.read()
    return response.status


@pytest.mark.integration
async def test_a_key_is_checked_once_per_ttl_and_refused_at_once_when_revoked_here(
    cached_gw: TestClient, backend: Backend
) -> None:
    key, made = backend.add_api_key("CRM", ["portals:read"])
    other, _ = backend.add_api_key("Billing", ["portals:read"])
    for _ in range(5):
        assert await api_status(cached_gw, key) == 200
    assert backend.key_checks == 1
    assert await api_status(cached_gw, other) == 200 and backend.key_checks == 2
    assert await api_status(cached_gw, "cpk_" + "A" * 43) == 401
    assert await api_status(cached_gw, "cpk_" + "A" * 43) == 401  # a refusal isn't kept
    assert backend.key_checks == 4
    revoked = await api_status(cached_gw, BOOTSTRAP_KEY, "DELETE", f"/api/v1/keys/{made['id']}")
    assert revoked == 204
    assert await api_status(cached_gw, key) == 401
    assert await api_status(cached_gw, other) == 200 and backend.key_checks == 5


@pytest.mark.integration
async def test_a_key_revoked_elsewhere_is_refused_once_identity_announces_it(
    cached_gw: TestClient, backend: Backend, test_env: TestEnv
) -> None:
    key, made = backend.add_api_key("CRM", ["portals:read"])
    assert await api_status(cached_gw, key) == 200
    del backend.api_keys[key]  # revoked through another replica: this one wasn't told
    assert await api_status(cached_gw, key) == 200
    revoked = ApiKeyChanged(key_id=uuid.UUID(made["id"]), name="CRM", scopes=["portals:read"])
    # Another program can't make a replica forget (nor, so, ask identity every time).
    await _announce(test_env, "identity.key.revoked", revoked, as_owner=False)
    await asyncio.sleep(0.3)
    assert await api_status(cached_gw, key) == 200
    await _announce(test_env, "identity.key.revoked", revoked)

    async def refused() -> bool:
        return await api_status(cached_gw, key) == 401

    await eventually(refused, "the announced revocation to apply")


def _close_listener_connection(test_env: TestEnv) -> None:
    """Close the cache listener's connection with the gateway's broker password changed, so
    it stays away until ``_let_listener_back`` (a reconnect can otherwise come back before a
    poll ever sees the cache off)."""
    user = broker.broker_user(test_env.bus_prefix, "gateway")
    servers = current_servers()
    # "--": a generated password may begin with "-", which rabbitmqctl would take for an
    # option (exit 64), leaving the user with the wrong password for every later test.
    servers.rabbitmqctl("-q", "change_password", "--", user, "not-" + user)
    # Only this run's own listener: the broker is shared, and every other installation's
    # gateway (another test run, a developer's `make run`) has a "gateway-cache" too.
    listed = servers.rabbitmqctl("-q", "list_connections", "pid", "user", "client_properties")
    pids = [
        fields[0]
        for fields in (line.split() for line in listed.splitlines())
        if len(fields) > 2 and fields[1] == user and "gateway-cache" in " ".join(fields[2:])
    ]
    assert pids, listed
    for pid in pids:
        servers.rabbitmqctl("-q", "close_connection", pid, "session cache test")


def _let_listener_back(test_env: TestEnv) -> None:
    user = broker.broker_user(test_env.bus_prefix, "gateway")
    password = test_env.broker_passwords["gateway"]
    current_servers().rabbitmqctl("-q", "change_password", "--", user, password)


@pytest.mark.integration
async def test_a_lost_broker_connection_turns_the_cache_off_until_it_is_back(
    cached_gw: TestClient, backend: Backend, test_env: TestEnv
) -> None:
    _, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    cache = cached_gw.app[CACHE]
    assert len(cache) == 2  # the session and the page
    await asyncio.to_thread(_close_listener_connection, test_env)
    await eventually(lambda: _true(not cache.live), "the cache to notice the lost connection")
    before = backend.current_calls, backend.page_calls
    assert await status_of(cached_gw, page) == 200
    assert await status_of(cached_gw, page) == 200
    # Asked every time while deaf.
    assert (backend.current_calls - before[0], backend.page_calls - before[1]) == (2, 2)
    await asyncio.to_thread(_let_listener_back, test_env)
    await eventually(lambda: _true(cache.live), "the listener to reconnect", limit=30)
    assert len(cache) == 0


def _delete_listener_queue(test_env: TestEnv) -> None:
    """Delete this run's listener queue, as an operator might: the broker cancels the
    consumer (basic.cancel) and aio-pika declares the queue again on its own."""
    servers = current_servers()
    prefix = f"{test_env.bus_prefix}.gateway.cache."
    names = [
        name
        for name in servers.rabbitmqctl("-q", "list_queues", "name").split()
        if name.startswith(prefix)
    ]
    assert names, f"no {prefix}* queue"
    for name in names:
        servers.rabbitmqctl("-q", "delete_queue", name)


@pytest.mark.integration
async def test_a_deleted_listener_queue_empties_the_cache(
    cached_gw: TestClient, backend: Backend, test_env: TestEnv
) -> None:
    # What was announced between the deletion and the new queue went nowhere: the cache
    # is off meanwhile and starts empty, as after a lost connection.
    _, page = await client_with_portal(backend, cached_gw)
    assert await status_of(cached_gw, page) == 200
    cache = cached_gw.app[CACHE]
    assert len(cache) == 2  # the session and the page
    with capture_logs() as logs:
        await asyncio.to_thread(_delete_listener_queue, test_env)
        await eventually(
            lambda: _true(cache.live and len(cache) == 0),
            "the cache to start empty once its listener consumes again",
            limit=30,
        )
    events = [e["event"] for e in logs if e["event"].startswith("gateway_cache_")]
    assert events == ["gateway_cache_off", "gateway_cache_on"], events
    before = backend.current_calls, backend.page_calls
    assert await status_of(cached_gw, page) == 200
    assert await status_of(cached_gw, page) == 200
    # Asked once, then kept again.
    assert (backend.current_calls - before[0], backend.page_calls - before[1]) == (1, 1)


@pytest.mark.integration
async def test_portal_pages_come_from_the_cache_until_the_portal_changes_here(
    cached_gw: TestClient, backend: Backend
) -> None:
    admin = backend.add_user("boss@example.com", PASSWORD, role="administrator")
    user, page = await client_with_portal(backend, cached_gw)
    client_cookie = cached_gw.session.cookie_jar.filter_cookies(cached_gw.make_url("/"))
    before = backend.page_calls
    for _ in range(5):
        assert await status_of(cached_gw, page) == 200
    assert backend.page_calls - before == 1
    portal = next(p for p in backend.portals.values() if page.endswith(f"/{p['slug']}/"))
    # The administrator (in a browser of their own) takes the client off the portal in
    # this gateway ...
    cached_gw.session.cookie_jar.clear()
    await log_in(cached_gw, admin, PASSWORD)
    headers = {"X-CSRF-Token": (await csrf(cached_gw))}
    removed = await cached_gw.put(
        f"/api/v1/portals/{portal['id']}/client", json={"user_id": None}, headers=headers
    )
    assert removed.status == 200
    # ... and the client's very next request is refused.
    use_session(cached_gw, client_cookie["cp_session"].value)
    assert await status_of(cached_gw, page) == 404


@pytest.mark.integration
async def test_an_access_change_announced_by_portals_reaches_the_cache(
    cached_gw: TestClient, backend: Backend, test_env: TestEnv
) -> None:
    user, page = await client_with_portal(backend, cached_gw)
    token = cached_gw.session.cookie_jar.filter_cookies(cached_gw.make_url("/"))["cp_session"]
    assert await status_of(cached_gw, page) == 200
    portal = next(p for p in backend.portals.values() if page.endswith(f"/{p['slug']}/"))
    portal["client_id"] = None  # changed in portals, not through this gateway
    assert await status_of(cached_gw, page) == 200  # still cached: nobody said
    await _announce(
        test_env,
        "portal.access.revoked",
        PortalAccessChanged(
            portal_id=uuid.UUID(portal["id"]), user_id=uuid.UUID(user["id"]), role="client"
        ),
    )
    await answers_soon(cached_gw, token.value, page, 404, "the announced access change to apply")


def test_the_tag_index_follows_every_way_an_entry_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.gateway.cache.MAX_ENTRIES", 3)
    cache, clock = live_cache(10)
    for n in range(5):  # two evicted, oldest first
        cache.put_portal(f"u{n}", "acme", {"id": "p1"}, cache.generation)
    assert len(cache) == 3 and cache.portal("u0", "acme") is None
    assert cache.portal("u4", "acme") is not None
    cache.put_portal("u4", "acme", {"id": "p2"}, cache.generation)  # replaced: new tags
    cache.forget_portal("p1")
    assert cache.portal("u4", "acme") == {"id": "p2"} and len(cache) == 1
    clock.now += 11
    assert cache.portal("u4", "acme") is None  # expired on read
    assert len(cache) == 0 and cache._tagged == {}


def test_an_answer_without_a_time_zone_is_not_kept() -> None:
    cache, _ = live_cache()
    current = answer("u1", "s1")
    current["session"]["expires_at"] = "2030-01-01T00:00:00"  # naive: can't be compared
    current["session"]["idle_expires_at"] = "2030-01-01T00:00:00"
    cache.put_session("tok", current, cache.generation)
    assert cache.session("tok") is None
