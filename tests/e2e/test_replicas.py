"""Two replicas of every service (issue 14): real processes on their own ports and
management ports, one database and bus prefix, the two gateways behind a round-robin
proxy that appends X-Forwarded-For, as an ingress does. Clients reach the proxy from
their own loopback addresses (127.0.0.2, …); the proxy reaches the gateways from
127.0.0.1, the one proxy they trust."""

from __future__ import annotations

import asyncio
import collections
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aio_pika.abc
import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.flows import CLIENT_PASSWORD, create_portal, eventually, invite, unique_email
from tests.support.forms import find_form
from tests.support.processes import ServiceProcess
from tests.support.proxy import RoundRobinProxy
from tests.support.smtp import accept_link
from tests.support.stack import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API_KEY,
    Browser,
    Replicas,
    db_fetch,
    replicas_behind_a_proxy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

RATE_PER_IP = 4
SWEEP_SECONDS = 0.5
# Long enough that only an announcement explains a gateway forgetting within a second.
CACHE_SECONDS = 30
# Who connects to the proxy from where: every person their own address.
ADMIN_AT = "127.0.0.4"
CLIENT_AT = "127.0.0.5"
GUESSER_AT = "127.0.0.2"
OTHER_AT = "127.0.0.3"


@dataclass
class Bus:
    """Everything published on the stack's two exchanges after ``baseline``: the last
    outbox row of each schema when the test started listening."""

    seen: list[tuple[str, str, bytes]] = field(default_factory=list)  # exchange, id, body
    baseline: dict[str, int] = field(default_factory=dict)

    def ids(self) -> collections.Counter[str]:
        return collections.Counter(message_id for _, message_id, _ in self.seen)

    def events(self, event_type: str) -> list[dict[str, Any]]:
        found = []
        for exchange, _, body in self.seen:
            if exchange == "events":
                event = orjson.loads(body)
                if event["type"] == event_type:
                    found.append(event)
        return found


@dataclass
class Setup:
    stack: Replicas
    proxy: RoundRobinProxy
    bus: Bus

    @property
    def gateways(self) -> list[ServiceProcess]:
        return self.stack["gateway"]


@pytest.fixture(scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with (
        replicas_behind_a_proxy(
            GATEWAY_TRUSTED_PROXIES="127.0.0.1/32",
            GATEWAY_CACHE_SECONDS=str(CACHE_SECONDS),
            GATEWAY_RATE_PER_IP=str(RATE_PER_IP),
            INVITATIONS_SWEEP_SECONDS=str(SWEEP_SECONDS),
        ) as (stack, proxy),
        listening(stack) as bus,
    ):
        yield Setup(stack, proxy, bus)


@asynccontextmanager
async def listening(stack: Replicas) -> AsyncIterator[Bus]:
    """Bind '#' on the events and mail exchanges as the broker's administrator."""
    bus = Bus()
    for schema in await outbox_schemas(stack):
        rows = await db_fetch(stack, f"SELECT coalesce(max(seq), 0) AS seq FROM {schema}.outbox")
        bus.baseline[schema] = int(rows[0]["seq"])
    prefix = stack.env["BUS_PREFIX"]
    connection = await aio_pika.connect_robust(stack.broker.amqp_url)
    try:
        channel = await connection.channel()
        for kind in ("events", "mail"):
            exchange = await channel.get_exchange(f"{prefix}.{kind}", ensure=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key="#")

            async def on_message(
                message: aio_pika.abc.AbstractIncomingMessage, kind: str = kind
            ) -> None:
                async with message.process():
                    bus.seen.append((kind, message.message_id or "", message.body))

            await queue.consume(on_message)
        yield bus
    finally:
        await connection.close()


async def outbox_schemas(stack: Replicas) -> list[str]:
    rows = await db_fetch(
        stack,
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'"
        " ORDER BY table_schema",
    )
    return [row["table_schema"] for row in rows]


# --- clients ---------------------------------------------------------------------------
class Api:
    """The gateway's /api/v1 with the API key, through the proxy from ``ADMIN_AT``."""

    def __init__(self, setup: Setup) -> None:
        self.base = setup.proxy.url + "/api/v1"
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}"},
            connector=aiohttp.TCPConnector(local_addr=(ADMIN_AT, 0)),
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body) as response:
            return response.status, await response.json()

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def api(setup: Setup) -> AsyncIterator[Api]:
    client = Api(setup)
    yield client
    await client.close()


async def log_in(setup: Setup, address: str, email: str, password: str) -> Browser:
    client = Browser(setup.proxy.url, local_address=address)
    _, url, html = await client.get("/login")
    status, url, html = await client.submit(
        url, html, "Log In", {"Email": email, "Password": password}
    )
    assert status == 200, (status, url, html[:500])
    return client


def session_token(client: Browser) -> str:
    for cookie in client.session.cookie_jar:
        if cookie.key == "cp_session" and cookie.value:
            return cookie.value
    raise AssertionError("no session cookie")


async def direct_get(gateway: ServiceProcess, path: str, token: str) -> tuple[int, str]:
    """GET ``path`` from one gateway, not through the proxy, with a session cookie:
    (status, Location)."""
    async with (
        aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), headers={"Cookie": f"cp_session={token}"}
        ) as session,
        session.get(gateway.url + path, allow_redirects=False) as response,
    ):
        return response.status, response.headers.get("Location", "")


async def page_language(gateway: ServiceProcess, path: str, token: str) -> str:
    """The ``lang`` of the page one gateway answers ``path`` with for the session."""
    async with (
        aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), headers={"Cookie": f"cp_session={token}"}
        ) as session,
        session.get(gateway.url + path, allow_redirects=False) as response,
    ):
        found = re.search(r'<html lang="([^"]+)"', await response.text())
        return found.group(1) if found else ""


async def signed_in(gateway: ServiceProcess, token: str) -> bool:
    status, location = await direct_get(gateway, "/client-portal/", token)
    return not (status in (302, 303) and urlsplit(location).path == "/login")


async def cache_hits(gateway: ServiceProcess, kind: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.management_url + "/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clientpress_gateway_cache_total" and sample.labels == {
                "kind": kind,
                "result": "hit",
            }:
                return float(sample.value)
    return 0.0


async def cached_on_both(setup: Setup, kind: str, path: str, token: str) -> None:
    """Ask each gateway twice: the second answer must come from its cache."""
    for gateway in setup.gateways:
        before = await cache_hits(gateway, kind)
        for _ in range(2):
            status, _ = await direct_get(gateway, path, token)
            assert status == 200, (gateway.url, path, status)
        assert await cache_hits(gateway, kind) > before, f"{gateway.url} did not cache {path}"


async def within_a_second(
    setup: Setup, since: float, gone: Callable[[ServiceProcess], Awaitable[bool]], what: str
) -> None:
    """Every gateway, asked directly, sees ``gone`` within a second of ``since``."""
    for gateway in setup.gateways:
        while not await gone(gateway):
            assert time.monotonic() - since < 1.0, f"{gateway.url} still {what} after 1 s"
            await asyncio.sleep(0.02)
    # A figure, not an assertion (shown with -s).
    print(f"both gateways no longer {what} {time.monotonic() - since:.3f} s after the change")


def answered_by(setup: Setup, count: int) -> set[str]:
    return set(setup.proxy.served[-count:])


# --- the checks every test ends with ------------------------------------------------------
async def each_row_published_once(setup: Setup) -> None:
    """Every outbox row written since the listener started is published, and each event
    id reaches the listener exactly once."""
    stack, bus = setup.stack, setup.bus
    wanted: set[str] = set()

    async def all_seen() -> bool | None:
        wanted.clear()
        for schema, baseline in bus.baseline.items():
            rows = await db_fetch(
                stack,
                f"SELECT id, published_at FROM {schema}.outbox WHERE seq > $1",
                baseline,
            )
            if any(row["published_at"] is None for row in rows):
                return None
            wanted.update(str(row["id"]) for row in rows)
        return True if wanted <= set(bus.ids()) else None

    await eventually(all_seen, "every outbox row on the bus")
    twice = {i: n for i, n in bus.ids().items() if n > 1}
    assert not twice, f"published more than once: {twice}"


async def no_email_twice(setup: Setup) -> None:
    stack = setup.stack

    async def settled() -> bool | None:
        rows = await db_fetch(
            stack, "SELECT count(*) AS n FROM mailer.deliveries WHERE status <> 'sent'"
        )
        return True if rows[0]["n"] == 0 else None

    await eventually(settled, "every delivery sent")
    messages = stack.sink.messages
    per_id = collections.Counter(str(m["Message-ID"]) for m in messages)
    assert all(n == 1 for n in per_id.values()), per_id.most_common(3)
    rows = await db_fetch(
        stack,
        "SELECT to_address, count(*) AS n FROM mailer.deliveries GROUP BY to_address",
    )
    sent = {row["to_address"].lower(): row["n"] for row in rows}
    received = collections.Counter(str(m["To"]).lower() for m in messages)
    assert received == sent, (received, sent)
    rows = await db_fetch(
        stack,
        "SELECT template, ref_id, count(*) AS n FROM mailer.deliveries"
        " GROUP BY template, ref_id HAVING count(*) > 1",
    )
    assert rows == [], rows


# --- the tests ------------------------------------------------------------------------------
async def test_invite_accept_revoke_disable_and_log_out_across_replicas(
    setup: Setup, api: Api
) -> None:
    stack = setup.stack
    admin = await log_in(setup, ADMIN_AT, ADMIN_EMAIL, ADMIN_PASSWORD)
    client = Browser(setup.proxy.url, local_address=CLIENT_AT)
    second: Browser | None = None
    try:
        # The admin creates a portal and invites a client (and someone else).
        secret = f"replica-words-{uuid.uuid4().hex[:6]}"
        editor_url, editor_html = await create_portal(
            admin, f"Replicas {uuid.uuid4().hex[:6]}", secret
        )
        portal_id = urlsplit(editor_url).path.rstrip("/").rsplit("/", 1)[-1]
        email, other = unique_email("replica"), unique_email("revoked")
        await invite(admin, editor_url, editor_html, email)
        code, made = await api.call("POST", f"/portals/{portal_id}/invitations", {"email": other})
        assert code == 201, made

        # The client accepts from the email.
        link = accept_link((await stack.sink.wait_for(email))[-1])
        code, url, html = await client.get(link)
        assert code == 200, html[:500]
        code, url, html = await client.submit(
            url,
            html,
            "Set Password",
            {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
        )
        assert code == 200 and "/client-portal/" in url, (url, html[:500])
        slug = urlsplit(url).path.split("/")[2]
        page = f"/client-portal/{slug}/"

        # The other invitation is revoked: its link no longer sets a password.
        other_link = accept_link((await stack.sink.wait_for(other))[-1])
        code, body = await api.call("POST", f"/invitations/{made['invitation']['id']}/revoke")
        assert code == 200 and body["status"] == "revoked", body
        probe = Browser(setup.proxy.url, local_address=OTHER_AT)
        try:
            code, _, html = await probe.get(other_link)
            assert code != 200 and 'type="password"' not in html, (code, html[:500])
        finally:
            await probe.close()

        # Access removed through one gateway: both forget the cached portal page.
        token = session_token(client)
        await cached_on_both(setup, "portal", page, token)
        code, body = await api.call("GET", f"/portals/{portal_id}")
        user_id = body["client_id"]
        assert user_id, body
        code, body = await api.call("PUT", f"/portals/{portal_id}/client", {"user_id": None})
        changed = time.monotonic()
        assert code == 200 and body["client_id"] is None, body

        async def page_gone(gateway: ServiceProcess) -> bool:
            return (await direct_get(gateway, page, token))[0] == 404

        await within_a_second(setup, changed, page_gone, "serves the removed portal")

        # The client chooses Deutsch on Account through one gateway: both forget the
        # cached session (identity.user.preferences_changed) and answer in German.
        await cached_on_both(setup, "session", "/client-portal/", token)
        code, url, html = await client.get("/account")
        assert code == 200, html[:500]
        code, url, html = await client.submit(url, html, "Save", extra={"locale": "de"})
        changed = time.monotonic()
        assert code == 200 and '<html lang="de"' in html, html[:500]

        async def german(gateway: ServiceProcess) -> bool:
            return await page_language(gateway, "/client-portal/", token) == "de"

        await within_a_second(setup, changed, german, "shows the old language")

        # Log out through one gateway: both forget the session (in German now: "Abmelden").
        await cached_on_both(setup, "session", "/client-portal/", token)
        code, url, html = await client.get("/client-portal/")
        code, url, html = await client.submit(url, html, "Abmelden")
        changed = time.monotonic()
        assert code == 200 and urlsplit(url).path == "/login", url

        async def logged_out(gateway: ServiceProcess) -> bool:
            return not await signed_in(gateway, token)

        await within_a_second(setup, changed, logged_out, "accepts the logged-out session")

        # Disable the user through one gateway: both forget their other session.
        second = await log_in(setup, CLIENT_AT, email, CLIENT_PASSWORD)
        other_token = session_token(second)
        await cached_on_both(setup, "session", "/client-portal/", other_token)
        code, url, html = await admin.get("/admin/users?q=" + quote(email))
        assert email in html, html[:1000]
        code, url, html = await admin.submit(url, html, "Disable")
        changed = time.monotonic()
        assert code == 200 and "Disabled" in html, html[:1000]

        async def disabled(gateway: ServiceProcess) -> bool:
            return not await signed_in(gateway, other_token)

        await within_a_second(setup, changed, disabled, "accepts the disabled user's session")
    finally:
        await admin.close()
        await client.close()
        if second is not None:
            await second.close()

    assert answered_by(setup, len(setup.proxy.served)) == {g.url for g in setup.gateways}
    await each_row_published_once(setup)
    await no_email_twice(setup)


async def test_the_sweep_expires_each_invitation_once(setup: Setup, api: Api) -> None:
    stack = setup.stack
    code, portal = await api.call(
        "POST", "/portals", {"title": f"Sweep {uuid.uuid4().hex[:6]}", "status": "active"}
    )
    assert code == 201, portal
    emails = [unique_email("sweep") for _ in range(12)]
    ids = []
    for address in emails:
        code, body = await api.call(
            "POST", f"/portals/{portal['id']}/invitations", {"email": address}
        )
        assert code == 201, body
        ids.append(body["invitation"]["id"])
    # Test setup: every link ends in the past at once; both replicas sweep twice a second.
    await db_fetch(
        stack,
        "UPDATE invitations.invitations SET sent_at = now() - interval '15 days',"
        " expires_at = now() - interval '1 day' WHERE id = ANY($1::uuid[])",
        ids,
    )

    async def all_expired() -> bool | None:
        seen = {e["data"]["invitation_id"] for e in setup.bus.events("invitation.expired")}
        return True if set(ids) <= seen else None

    await eventually(all_expired, "an invitation.expired for each")
    # Two more rounds of each replica's sweep: a second event would come in them.
    await asyncio.sleep(2 * SWEEP_SECONDS)
    expired = collections.Counter(
        e["data"]["invitation_id"] for e in setup.bus.events("invitation.expired")
    )
    assert {i: expired[i] for i in ids} == dict.fromkeys(ids, 1), expired
    rows = await db_fetch(
        stack, "SELECT status FROM invitations.invitations WHERE id = ANY($1::uuid[])", ids
    )
    assert {row["status"] for row in rows} == {"expired"}
    await each_row_published_once(setup)
    await no_email_twice(setup)


async def test_a_limit_counts_across_replicas_per_real_client_address(setup: Setup) -> None:
    guesser = Browser(setup.proxy.url, local_address=GUESSER_AT)
    other = Browser(setup.proxy.url, local_address=OTHER_AT)
    try:
        _, _, html = await guesser.get("/login")
        form = find_form(html, "Log In")

        async def post(client: Browser, **headers: str) -> tuple[int, str | None]:
            data = form.fill({"Email": unique_email("guess"), "Password": "not-it-123456"})
            async with client.session.post(
                setup.proxy.url + "/login", data=data, headers=headers, allow_redirects=False
            ) as response:
                return response.status, response.headers.get("Retry-After")

        # One address's posts alternate between the gateways, and count as one.
        statuses = [(await post(guesser))[0] for _ in range(RATE_PER_IP)]
        assert statuses == [401] * RATE_PER_IP
        assert answered_by(setup, RATE_PER_IP) == {g.url for g in setup.gateways}
        code, retry_after = await post(guesser)
        assert code == 429 and retry_after is not None and int(retry_after) > 0
        # A header the client writes itself changes nothing: the proxy appends the peer.
        code, _ = await post(guesser, **{"X-Forwarded-For": "198.51.100.7"})
        assert code == 429
        # Another client behind the same proxy has its own count.
        _, _, html = await other.get("/login")
        form = find_form(html, "Log In")
        code, _ = await post(other)
        assert code == 401
    finally:
        await guesser.close()
        await other.close()
