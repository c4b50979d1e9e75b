"""Webhooks inside the mailer, on the real database and broker: lifecycle events from
their owners → signed POSTs to a real receiver, retries after a 500, Redeliver, secret
rotation with an overlap, and refused private targets (at creation and at delivery)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient

from libs.common import broker
from libs.common.bus import Bus
from libs.common.events import InvitationClosed, InvitationCreated, make_event
from services.mailer.api import DEPS
from services.mailer.webhooks.domain import RefusedTarget, public_address, sign
from services.mailer.webhooks.sender import WebhookSender
from services.mailer.webhooks.targets import GuardedResolver, literal_problem
from tests.mailer.conftest import (
    StartMailer,
    invitation_job,
    mailer_settings,
    publish_job,
    wait_for_row,
)
from tests.support.env import TestEnv, free_port
from tests.support.smtp import SmtpSink
from tests.support.webhooks import Received, Receiver, receiver, verify

pytestmark = pytest.mark.integration

EVENTS = ["invitation.created", "invitation.revoked"]


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with receiver() as got:
        yield got


class Internal:
    """The mailer's internal API, called as the gateway."""

    def __init__(self, client: TestClient[Any, Any], env: TestEnv) -> None:
        self.client = client
        self.env = env
        self.made: list[str] = []

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = self.env.keys.headers("gateway", "mailer")
        response = await self.client.request(method, path, headers=headers, **kw)
        body = await response.json() if response.status != 204 else None
        return response.status, body

    async def add(self, url: str, events: list[str] = EVENTS) -> dict[str, Any]:
        status, body = await self.call("POST", "/webhooks", json={"url": url, "events": events})
        assert status == 201, body
        self.made.append(body["id"])
        return dict(body)

    async def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        status, body = await self.call("GET", f"/webhooks/{endpoint_id}/deliveries")
        assert status == 200, body
        return list(body["items"])

    async def cleanup(self) -> None:
        # The run's database is shared by the module: leave no endpoint for the next test.
        for endpoint_id in self.made:
            await self.call("DELETE", f"/webhooks/{endpoint_id}")


@pytest.fixture
async def internal(
    start_mailer: StartMailer, smtp_sink: SmtpSink, migrated_schemas: TestEnv
) -> AsyncIterator[Callable[..., Any]]:
    made: list[Internal] = []

    async def start(**overrides: Any) -> Internal:
        overrides.setdefault("webhooks_allow_private", True)
        overrides.setdefault("webhooks_retry_base_seconds", 0.05)
        client = await start_mailer(smtp_sink.port, **overrides)
        api = Internal(client, migrated_schemas)
        made.append(api)
        return api

    yield start
    for api in reversed(made):
        await api.cleanup()


def created(key: str | None = "crm-42") -> InvitationCreated:
    return InvitationCreated(
        invitation_id=uuid.uuid4(),
        portal_id=uuid.uuid4(),
        email=f"client-{uuid.uuid4().hex[:8]}@example.com",
        expires_at=datetime.now(UTC) + timedelta(days=14),
        invited_by="admin@example.com",
        idempotency_key=key,
    )


async def publish_created(bus: Bus, data: InvitationCreated) -> None:
    await bus.publish_envelope(make_event("invitation.created", data, source="invitations"))


def about(data: InvitationCreated) -> Callable[[list[Received]], bool]:
    def ready(received: list[Received]) -> bool:
        return any(r.json["data"]["invitation_id"] == str(data.invitation_id) for r in received)

    return ready


def test_signatures_match_the_specification_example() -> None:
    # The Standard Webhooks specification's own test vector.
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


async def test_an_event_arrives_signed_with_its_idempotency_key_and_no_secret(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal()
    endpoint = await api.add(hook.url)
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    # The secret is shown when the endpoint is added, and never again.
    _, listed = await api.call("GET", "/webhooks")
    mine = [e for e in listed["items"] if e["id"] == endpoint["id"]]
    assert mine and "secret" not in mine[0] and secret not in str(listed)

    data = created()
    await publish_created(publisher, data)
    [got] = [
        r
        for r in await hook.wait_for(about(data))
        if r.json["data"]["invitation_id"] == str(data.invitation_id)
    ]
    assert verify(secret, got)
    assert got.id.startswith("msg_")
    assert got.json["type"] == "invitation.created"
    assert datetime.fromisoformat(got.json["timestamp"])
    assert got.json["data"]["idempotency_key"] == "crm-42"
    assert got.json["data"]["email"] == data.email
    assert secret not in got.body.decode() and secret[6:] not in got.body.decode()
    assert not {"token", "link", "password", "secret"} & set(got.json["data"])

    # The record may trail the answer by a commit.
    log = await _settled(api, endpoint["id"])
    assert log["event_type"] == "invitation.created"
    assert log["response_code"] == 200 and log["attempts"] == 1
    assert log["duration_ms"] is not None and log["duration_ms"] >= 0


async def test_a_500_is_retried_and_redeliver_sends_it_again(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal()
    endpoint = await api.add(hook.url)
    hook.answers = [500]
    data = created()
    await publish_created(publisher, data)

    def tries(n: int) -> Callable[[list[Received]], bool]:
        def ready(received: list[Received]) -> bool:
            mine = [
                r for r in received if r.json["data"]["invitation_id"] == str(data.invitation_id)
            ]
            return len(mine) >= n

        return ready

    first, second = (await hook.wait_for(tries(2)))[:2]
    # The same message: one webhook-id across tries, each signed afresh.
    assert first.id == second.id and first.body == second.body
    assert verify(endpoint["secret"], second)
    log = await _settled(api, endpoint["id"])
    assert log["status"] == "delivered" and log["attempts"] == 2 and log["response_code"] == 200

    status, queued = await api.call(
        "POST", f"/webhooks/{endpoint['id']}/deliveries/{log['id']}/redeliver"
    )
    assert status == 202 and queued["status"] == "queued"
    third = (await hook.wait_for(tries(3)))[2]
    assert third.id == first.id and verify(endpoint["secret"], third)
    log = await _settled(api, endpoint["id"], attempts=3)
    assert log["status"] == "delivered" and log["attempts"] == 3

    status, body = await api.call(
        "POST", f"/webhooks/{endpoint['id']}/deliveries/{uuid.uuid4()}/redeliver"
    )
    assert status == 404 and body["error"]["code"] == "webhook_delivery_not_found"


async def _settled(api: Internal, endpoint_id: str, attempts: int = 0) -> dict[str, Any]:
    """The endpoint's one delivery once it is delivered (after ``attempts`` tries)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [log] = await api.deliveries(endpoint_id)
        if log["status"] == "delivered" and log["attempts"] >= attempts:
            return log
        await asyncio.sleep(0.02)
    raise AssertionError(f"never delivered: {log}")


async def test_a_rotated_secret_is_shown_once_and_both_sign_during_the_overlap(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal()
    endpoint = await api.add(hook.url)
    status, rotated = await api.call("POST", f"/webhooks/{endpoint['id']}/rotate-secret")
    assert status == 200 and rotated["id"] == endpoint["id"]
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    data = created()
    await publish_created(publisher, data)
    got = (await hook.wait_for(about(data)))[-1]
    assert verify(rotated["secret"], got) and verify(endpoint["secret"], got)
    assert len(got.headers["webhook-signature"].split(" ")) == 2

    status, body = await api.call("POST", f"/webhooks/{uuid.uuid4()}/rotate-secret")
    assert status == 404 and body["error"]["code"] == "webhook_not_found"


async def test_an_endpoint_receives_only_the_events_it_chose(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal()
    endpoint = await api.add(hook.url, ["invitation.revoked"])
    first = created()
    revoked = InvitationClosed(
        invitation_id=first.invitation_id, portal_id=first.portal_id, email=first.email
    )
    # The created event goes first; once the revoked one is in, the created one had its turn.
    await publish_created(publisher, first)
    await publisher.publish_envelope(
        make_event("invitation.revoked", revoked, source="invitations")
    )
    await hook.wait_for(about(first))
    assert [r.json["type"] for r in hook.received] == ["invitation.revoked"]
    [log] = await api.deliveries(endpoint["id"])
    assert log["event_type"] == "invitation.revoked"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hooks",
        "http://localhost:9/hooks",
        "http://[::1]:9/hooks",
        "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://0.0.0.0/hooks",
        # IPv6 forms that carry a private IPv4 address, which a NAT64 or 6to4 gateway (an
        # IPv6-only cluster's way out) delivers to: judged by that address.
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://[64:ff9b::10.0.0.5]/hooks",
        "http://[64:ff9b:1::a00:5]/hooks",
        "http://[2002:a9fe:a9fe::1]/hooks",
        "http://[::127.0.0.1]/hooks",
        "http://[::ffff:0:a00:5]/hooks",
        "http://[fec0::1]/hooks",
        "ftp://example.com/hooks",
        "https://user:password@example.com/hooks",
        "file:///etc/passwd",
        "not a url",
    ],
)
async def test_private_and_non_http_targets_are_refused(
    internal: Callable[..., Any], url: str
) -> None:
    api: Internal = await internal(webhooks_allow_private=False)
    status, body = await api.call(
        "POST", "/webhooks", json={"url": url, "events": ["invitation.created"]}
    )
    assert status == 422, body
    assert body["error"]["code"] == "webhook_target_refused"


async def test_a_target_that_turned_private_is_refused_at_delivery(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    # Stored while private targets were allowed, delivered by a mailer that refuses them:
    # the check at delivery time is what stands against DNS rebinding.
    allowing: Internal = await internal()
    endpoint = await allowing.add(hook.url)
    await allowing.client.close()
    allowing.made.clear()  # the refusing mailer deletes it
    refusing: Internal = await internal(webhooks_allow_private=False)
    data = created()
    await publish_created(publisher, data)
    deadline = time.monotonic() + 30
    logs = await refusing.deliveries(endpoint["id"])
    while not (logs and logs[0]["status"] == "failed"):
        assert time.monotonic() < deadline, f"not refused: {logs}"
        await asyncio.sleep(0.02)
        logs = await refusing.deliveries(endpoint["id"])
    assert logs[0]["error"].startswith("refused:") and logs[0]["response_code"] is None
    assert not hook.received
    await refusing.call("DELETE", f"/webhooks/{endpoint['id']}")


class Answers(AbstractResolver):
    """A DNS that answers what the test says (the rebinding attacker's)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_the_delivery_resolver_refuses_any_private_answer() -> None:
    assert await GuardedResolver(Answers("93.184.215.14")).resolve("example.com", 443)
    for answer in (("127.0.0.1",), ("93.184.215.14", "10.0.0.5"), ("169.254.169.254",), ()):
        with pytest.raises(RefusedTarget):
            await GuardedResolver(Answers(*answer)).resolve("rebind.example", 443)
    assert public_address("2606:4700::1111") and not public_address("fd00::1")
    # A name whose AAAA answer is the NAT64 (or 6to4) form of a private address.
    for answer in ("64:ff9b::a00:5", "2002:7f00:1::", "::ffff:0:a9fe:a9fe", "fec0::5"):
        with pytest.raises(RefusedTarget):
            await GuardedResolver(Answers(answer)).resolve("rebind.example", 443)
    # The same forms of a public address stay public.
    assert public_address("64:ff9b::5db8:d70e") and public_address("2002:5db8:d70e::1")


@pytest.mark.parametrize(
    "url",
    [
        "http://①②⑦.0.0.1:9/hooks",
        "http://\uff11\uff12\uff17.0.0.1/hooks",  # full-width digits
        "http://169。254。169。254/latest",
    ],
)
def test_the_delivery_check_reads_the_host_as_the_client_connects_to_it(url: str) -> None:
    """The HTTP client normalises a host (IDNA: full-width digits, circled digits,
    ideographic full stops) into an IP address and then connects without asking the
    resolver; the delivery check must see that address, not the text it was written as."""
    assert literal_problem(url) is not None


def test_the_gateway_offers_exactly_the_events_the_mailer_is_bound_to() -> None:
    from libs.common.broker import CONSUMES, WEBHOOK_EVENTS
    from services.gateway.webhook_models import EVENT_TYPES as OFFERED
    from services.mailer.api import EventType

    bound = {b.routing_key for b in CONSUMES["mailer"] if b.exchange == "events"}
    assert set(OFFERED) == set(WEBHOOK_EVENTS) == bound == set(EventType.__args__)


async def test_the_delivery_log_pages_newest_first(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal()
    endpoint = await api.add(hook.url)
    sent = [created() for _ in range(3)]
    for data in sent:
        await publish_created(publisher, data)
    await hook.wait_for(lambda received: all(about(d)(received) for d in sent))
    status, first = await api.call("GET", f"/webhooks/{endpoint['id']}/deliveries?limit=2")
    assert status == 200 and len(first["items"]) == 2 and first["next_cursor"]
    status, rest = await api.call(
        "GET", f"/webhooks/{endpoint['id']}/deliveries?limit=2&cursor={first['next_cursor']}"
    )
    assert status == 200 and len(rest["items"]) == 1 and rest["next_cursor"] is None
    items = first["items"] + rest["items"]
    assert len({d["id"] for d in items}) == 3
    stamps = [d["created_at"] for d in items]
    assert stamps == sorted(stamps, reverse=True)
    status, body = await api.call("GET", f"/webhooks/{endpoint['id']}/deliveries?cursor=nope")
    assert status == 422 and body["error"]["code"] == "invalid_cursor"
    # A cursor is one endpoint's: another's log doesn't page from it.
    other = await api.add(hook.url + "/other")
    status, body = await api.call(
        "GET", f"/webhooks/{other['id']}/deliveries?cursor={first['next_cursor']}"
    )
    assert status == 422 and body["error"]["code"] == "invalid_cursor", body
    status, body = await api.call("GET", f"/webhooks/{uuid.uuid4()}/deliveries")
    assert status == 404 and body["error"]["code"] == "webhook_not_found"

    # Settings → Webhooks: every endpoint with its newest deliveries, in one request.
    status, body = await api.call("GET", "/webhooks?deliveries=2")
    assert status == 200
    [mine] = [e for e in body["items"] if e["id"] == endpoint["id"]]
    assert [d["id"] for d in mine["deliveries"]] == [d["id"] for d in first["items"]]
    status, body = await api.call("GET", "/webhooks")
    assert all("deliveries" not in e for e in body["items"])
    status, body = await api.call("GET", "/webhooks?deliveries=51")
    assert status == 422


async def test_without_an_overlap_only_the_new_secret_signs(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver
) -> None:
    api: Internal = await internal(webhooks_rotation_overlap_seconds=0)
    endpoint = await api.add(hook.url)
    _, rotated = await api.call("POST", f"/webhooks/{endpoint['id']}/rotate-secret")
    data = created()
    await publish_created(publisher, data)
    got = (await hook.wait_for(about(data)))[-1]
    assert verify(rotated["secret"], got) and not verify(endpoint["secret"], got)
    assert len(got.headers["webhook-signature"].split(" ")) == 1


async def test_only_the_gateway_may_call_the_webhooks_api(
    internal: Callable[..., Any], migrated_schemas: TestEnv
) -> None:
    api: Internal = await internal()
    response = await api.client.get("/webhooks")
    assert response.status == 401
    headers = migrated_schemas.keys.headers("invitations", "mailer")
    response = await api.client.get("/webhooks", headers=headers)
    assert response.status == 403


async def test_events_arriving_together_are_queued_in_one_statement(
    internal: Callable[..., Any], hook: Receiver
) -> None:
    """The lifecycle events that share the consumer's transaction: one statement queues a
    delivery per endpoint that wants each one, and again nothing (once per endpoint and
    event)."""
    from libs.common.web import POOL
    from services.mailer.webhooks.repository import queue_for_events

    api: Internal = await internal()
    both = await api.add(hook.url, ["invitation.created", "invitation.revoked"])
    revoked_only = await api.add(hook.url, ["invitation.revoked"])
    payload = '{"type": "test"}'
    events = [
        (uuid.uuid4(), "invitation.created", payload),
        (uuid.uuid4(), "invitation.revoked", payload),
        (uuid.uuid4(), "invitation.accepted", payload),
    ]
    async with api.client.app[POOL].acquire() as conn, conn.transaction():
        assert await queue_for_events(conn, events) == 3
        assert await queue_for_events(conn, events) == 0
    assert sorted(d["event_type"] for d in await api.deliveries(both["id"])) == [
        "invitation.created",
        "invitation.revoked",
    ]
    assert [d["event_type"] for d in await api.deliveries(revoked_only["id"])] == [
        "invitation.revoked"
    ]


async def test_lifecycle_events_reach_the_mailer_only_while_an_endpoint_wants_them(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver, pool: asyncpg.Pool
) -> None:
    """With no endpoint for a type, the mailer's queue isn't bound to it: another system's
    invitation costs the mailer no delivery, inbox row or transaction. An endpoint is bound
    before its creation is answered, so the next event reaches it; deleting the last one
    unbinds. (Before, every lifecycle event took an inbox transaction in the mailer.)"""
    api: Internal = await internal()
    subscription = api.client.app[DEPS].subscription
    await eventually(lambda: subscription.bound == frozenset())
    # No service needs the types only webhooks read: they are not published mandatory.
    assert not broker.mandatory("invitation.expired") and broker.mandatory("invitation.created")

    async def reached_the_mailer(data: InvitationCreated) -> bool:
        envelope = make_event("invitation.created", data, source="invitations")
        await publisher.publish_envelope(envelope)
        # A mail job published after it, into the same queue: once it is recorded, an
        # event ahead of it in the queue has been applied too.
        job, _ = invitation_job(f"marker-{uuid.uuid4().hex[:8]}@example.com")
        await publish_job(publisher, job)
        await wait_for_row(pool, job.mail_id, lambda _: True)
        seen = await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", envelope.id)
        return bool(seen)

    assert not await reached_the_mailer(created())

    endpoint = await api.add(hook.url, ["invitation.created"])
    assert subscription.bound == frozenset({"invitation.created"})
    wanted = created()
    assert await reached_the_mailer(wanted)
    await hook.wait_for(about(wanted))

    status, _ = await api.call("DELETE", f"/webhooks/{endpoint['id']}")
    assert status == 204 and subscription.bound == frozenset()
    assert not await reached_the_mailer(created())


async def test_the_binding_keeper_leaves_unwanted_lifecycle_types_unbound(
    internal: Callable[..., Any], publisher: Bus, pool: asyncpg.Pool
) -> None:
    """The bus binds its queues again every BINDINGS_CHECK_SECONDS (an exchange declared
    again by hand); it bound the mailer's queue to every lifecycle type the subscription had
    unbound, so from 10 s after start every invitation cost the mailer a delivery, an inbox
    row and a transaction again (6,759 of 7,496 in a `bench invite` events run)."""
    from libs.common.web import BUS

    api: Internal = await internal()
    subscription = api.client.app[DEPS].subscription
    await eventually(lambda: subscription.bound == frozenset())
    await api.client.app[BUS]._bindings.check()  # one pass of the keeper, as every 10 s

    envelope = make_event("invitation.created", created(), source="invitations")
    await publisher.publish_envelope(envelope)
    job, _ = invitation_job(f"marker-{uuid.uuid4().hex[:8]}@example.com")
    await publish_job(publisher, job)  # behind it in the queue: recorded after it
    await wait_for_row(pool, job.mail_id, lambda _: True)
    seen = await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", envelope.id)
    assert seen == 0


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.02)


async def test_an_endpoint_is_not_saved_while_the_broker_is_out_of_reach(
    internal: Callable[..., Any], hook: Receiver
) -> None:
    """Its events could not be bound to the mailer's queue, so it would receive nothing:
    503 broker_unavailable, in words, and no endpoint."""
    api: Internal = await internal(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    status, body = await api.call(
        "POST", "/webhooks", json={"url": hook.url, "events": ["invitation.created"]}
    )
    assert status == 503 and body["error"]["code"] == "broker_unavailable", body
    assert "message broker" in body["error"]["message"]
    status, listed = await api.call("GET", "/webhooks")
    assert status == 200 and all(e["url"] != hook.url for e in listed["items"]), listed


async def test_the_webhook_senders_stop_without_waiting_out_their_maintenance(
    pool: asyncpg.Pool, migrated_schemas: TestEnv
) -> None:
    """Stopping waited for the maintenance task's 5 s sleep to end: every Ctrl-C on make
    run, and every rolling restart, held the mailer that long."""
    sender = WebhookSender(pool, mailer_settings(migrated_schemas, free_port()))
    await sender.start()
    await asyncio.sleep(0.1)  # the maintenance task is in its sleep
    [maintenance] = [t for t in asyncio.all_tasks() if t.get_name() == "webhook-maintenance"]
    await sender.stop()
    assert maintenance.cancelled()  # old: it ran to the end of its sleep


class _TenMinutesBehind(datetime):
    """The mailer host's clock, ten minutes behind the database server's."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) - timedelta(minutes=10)


async def test_a_retry_waits_its_delay_on_the_database_clock_whatever_the_mailer_host_says(
    internal: Callable[..., Any],
    publisher: Bus,
    hook: Receiver,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue is read on the database's clock; a retry planned on the mailer's own
    clock, ten minutes behind, fell due at once, so a failing receiver was posted to at
    every poll instead of after the backoff."""
    monkeypatch.setattr("services.mailer.webhooks.sender.datetime", _TenMinutesBehind)
    api: Internal = await internal(webhooks_retry_base_seconds=60)
    endpoint = await api.add(hook.url)
    hook.answers = [500, 500, 500]
    data = created()
    await publish_created(publisher, data)
    await hook.wait_for(about(data))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [log] = await api.deliveries(endpoint["id"])
        if log["status"] == "queued" and log["attempts"] >= 1:
            break
        await asyncio.sleep(0.02)
    database_now = await pool.fetchval("SELECT clock_timestamp()")
    assert log["attempts"] == 1, log
    assert datetime.fromisoformat(log["next_attempt_at"]) > database_now + timedelta(seconds=50)


async def test_a_receiver_that_hangs_holds_back_no_other_endpoint(
    internal: Callable[..., Any], publisher: Bus, hook: Receiver, pool: asyncpg.Pool
) -> None:
    """One customer's receiver that never answers: its deliveries (and later their
    retries, always the oldest due) were claimed first by every worker, so each other
    endpoint's deliveries waited behind all of them. It holds at most half the workers
    while another endpoint has a delivery due (all of them while no one else does)."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads the request, never answers

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        api: Internal = await internal(
            webhooks_concurrency=4, webhooks_timeout_seconds=1.0, webhooks_retry_base_seconds=60
        )
        dead = await api.add(f"http://127.0.0.1:{port}/hooks", ["invitation.created"])
        for _ in range(16):
            await publish_created(publisher, created(key=None))
        waiting = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1"
        await _until(lambda: _count(pool, waiting, dead["id"]), 16)
        await api.add(hook.url, ["invitation.created"])
        data = created()
        await publish_created(publisher, data)
        await hook.wait_for(about(data))
        tried = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND attempts > 0"
        # Taken in due order, all 16 older deliveries to the dead receiver went first.
        assert await _count(pool, tried, dead["id"]) < 12
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def _count(pool: asyncpg.Pool, query: str, endpoint_id: str) -> int:
    return int(await pool.fetchval(query, uuid.UUID(endpoint_id)))


async def _until(read: Callable[[], Any], at_least: int, timeout: float = 30.0) -> None:
    """Poll until ``read()`` reaches ``at_least`` (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (value := await read()) < at_least:
        assert time.monotonic() < deadline, f"only {value} of {at_least}"
        await asyncio.sleep(0.05)
