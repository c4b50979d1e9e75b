"""Tools for the fault tests: a JSON API client that rides out outages, bursts of
invitations, and checks on what the outboxes, dead-letter queues and SMTP sink hold."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg

from libs.common import broker
from libs.common.events import EventData, make_event
from tests.support.servers import current as current_servers
from tests.support.stack import API_KEY, Stack, db_fetch

FIGURES = Path("/tmp/clientpress-reliability.jsonl")
SCHEMAS = ("identity", "portals", "invitations", "mailer")
# The gateway consumes session revocations on a queue of its own without a dead-letter queue.
CONSUMERS = ("portals", "invitations", "invitations.requests", "mailer")


def record(scenario: str, **figures: Any) -> None:
    """One JSON line per scenario: printed (pytest -s) and appended for docs/reliability.md."""
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True, default=str)
    print(line)
    with FIGURES.open("a") as out:
        out.write(line + "\n")


def run(*command: str, timeout: float = 60) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2
) -> float:
    """Poll until ``check`` is true; returns the seconds it took (a figure, never asserted)."""
    start = time.monotonic()
    while True:
        if await check():
            return round(time.monotonic() - start, 2)
        if time.monotonic() - start > timeout:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def unique_emails(tag: str, count: int) -> list[str]:
    run_id = uuid.uuid4().hex[:6]
    return [f"{tag}-{run_id}-{i}@example.com" for i in range(count)]


@dataclass
class Api:
    """The gateway's /api/v1 with the API key. Requests that fail because the gateway or a
    service is away are retried; when the failure leaves it unknown whether an invitation
    was recorded, the client looks before retrying (the API has no idempotency key, and a
    second invite of a pending address is a Resend: a second email by design)."""

    stack: Stack
    session: aiohttp.ClientSession = field(init=False)
    retries: Counter[str] = field(default_factory=Counter)
    invited: int = 0
    # Off: one connection per request, so that a server closing an idle keep-alive
    # connection as it stops (a race HTTP/1.1 leaves to the client) can't be confused
    # with a request broken midway.
    keepalive: bool = True

    def __post_init__(self) -> None:
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(force_close=not self.keepalive),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.stack.public_url + path, json=body) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def create_portal(self, title: str) -> dict[str, Any]:
        status, body = await self.call(
            "POST", "/api/v1/portals", {"title": title, "content": "<p>Hi</p>", "status": "active"}
        )
        assert status == 201, (status, body)
        portal: dict[str, Any] = body
        # The invitations service learns of the portal from portal.created.
        await wait_until(
            lambda: self._replica_has(portal["id"]), 20, "the portal in the invitations replica"
        )
        return portal

    async def _replica_has(self, portal_id: str) -> bool:
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            found = await conn.fetchval(
                "SELECT true FROM invitations.portals WHERE portal_id = $1", uuid.UUID(portal_id)
            )
        finally:
            await conn.close()
        return bool(found)

    async def invite(self, portal_id: str, email: str, deadline: float = 60.0) -> int:
        """Invite until the invitation exists; returns how many attempts it took."""
        give_up = time.monotonic() + deadline
        attempts = 0
        while True:
            attempts += 1
            try:
                status, body = await self.call(
                    "POST", f"/api/v1/portals/{portal_id}/invitations", {"email": email}
                )
            except aiohttp.ClientConnectorError:
                # Refused: the request never reached the gateway, so retrying is safe.
                self.retries["refused"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.retries["ambiguous"] += 1
                self.retries[f"ambiguous:{type(exc).__name__}"] += 1
                if await self._landed(portal_id, email):
                    return attempts
            else:
                if status in (200, 201):
                    assert status == 201 and body["outcome"] == "created", (email, body)
                    return attempts
                assert status == 503, (status, body)  # never a 500 or a trace
                assert "unavailable" in body["error"]["code"], body
                self.retries["503"] += 1
                if await self._landed(portal_id, email):
                    return attempts
            assert time.monotonic() < give_up, f"invite of {email} kept failing: {self.retries}"
            await asyncio.sleep(0.3)

    async def _landed(self, portal_id: str, email: str) -> bool:
        # Give a request the gateway was forwarding when it failed time to finish first.
        await asyncio.sleep(1.0)
        try:
            conn = await asyncpg.connect(self.stack.database_url, timeout=5)
        except (OSError, asyncpg.PostgresError):
            return False  # the database is away: nothing can have landed meanwhile
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM invitations.invitations"
                " WHERE portal_id = $1 AND email_lower = $2",
                uuid.UUID(portal_id),
                email.lower(),
            )
        finally:
            await conn.close()
        return bool(found)


async def burst(
    api: Api, portal_id: str, emails: list[str], concurrency: int = 16
) -> dict[str, int]:
    """Invite every address with ``concurrency`` clients; returns attempts per address."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for email in emails:
        queue.put_nowait(email)
    attempts: dict[str, int] = {}

    async def client() -> None:
        while not queue.empty():
            email = queue.get_nowait()
            attempts[email] = await api.invite(portal_id, email)
            api.invited += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return attempts


def per_address(stack: Stack, emails: list[str]) -> Counter[str]:
    wanted = {e.lower() for e in emails}
    counts: Counter[str] = Counter()
    for message in stack.sink.messages:
        to = str(message["To"]).lower()
        for address in wanted:
            if address in to:
                counts[address] += 1
    return counts


async def all_delivered(stack: Stack, emails: list[str], timeout: float) -> float:
    wanted = {e.lower() for e in emails}

    async def done() -> bool:
        return wanted <= set(per_address(stack, emails))

    return await wait_until(done, timeout, f"{len(emails)} emails", every=0.5)


async def deliveries_settled(stack: Stack, timeout: float = 30) -> None:
    """Wait until every delivery is recorded as sent, in the mailer and on its invitation;
    past ``timeout``, fail naming the rows that are not."""

    async def settled() -> bool:
        rows = await db_fetch(
            stack,
            "SELECT (SELECT count(*) FROM mailer.deliveries WHERE status <> 'sent')"
            " + (SELECT count(*) FROM invitations.invitations WHERE delivery <> 'sent') AS n",
        )
        return int(rows[0]["n"]) == 0

    try:
        await wait_until(settled, timeout, "every delivery recorded as sent")
    except AssertionError:
        mailer = await db_fetch(
            stack,
            "SELECT mail_id, status, attempts, last_error FROM mailer.deliveries"
            " WHERE status <> 'sent'",
        )
        invitations = await db_fetch(
            stack,
            "SELECT id, status, delivery, last_mail_id FROM invitations.invitations"
            " WHERE delivery <> 'sent'",
        )
        raise AssertionError(
            f"mailer: {[dict(r) for r in mailer]} invitations: {[dict(r) for r in invitations]}"
        ) from None


async def outbox_backlog(stack: Stack) -> dict[str, int]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return {
            schema: int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
                )
            )
            for schema in SCHEMAS
        }
    finally:
        await conn.close()


async def outboxes_drained(stack: Stack, timeout: float = 30) -> None:
    async def empty() -> bool:
        return sum((await outbox_backlog(stack)).values()) == 0

    await wait_until(empty, timeout, "the outboxes to drain")


async def dead_letters(stack: Stack) -> dict[str, int]:
    prefix = stack.env["BUS_PREFIX"]
    connection = await aio_pika.connect(current_servers().amqp_url)
    try:
        counts = {}
        for service in CONSUMERS:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{prefix}.{service}.dead", passive=True)
            result = queue.declaration_result
            counts[service] = int(result.message_count or 0)
            await channel.close()
        return counts
    finally:
        await connection.close()


async def publish(stack: Stack, event_type: str, data: EventData | None, body: bytes = b"") -> str:
    """Publish to the public exchange as the sender the consumers trust for this type
    (its owning service's broker user; an integration's for a command): a real envelope
    for ``data``, or ``body`` as it is."""
    message_id = str(uuid.uuid4())
    if data is not None:
        envelope = make_event(event_type, data, source="fault-test", correlation_id="fault-test")
        body, message_id = envelope.to_json(), str(envelope.id)
    owners = broker.owners(event_type)
    url = stack.broker.amqp_url_as(sorted(owners)[0]) if owners else stack.broker.integration_url
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{stack.env['BUS_PREFIX']}.events")
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                type=event_type,
                user_id=broker.user_of(url),
            ),
            routing_key=event_type,
        )
    finally:
        await connection.close()
    return message_id


async def publish_raw_envelope(stack: Stack, envelope_json: bytes, event_type: str) -> None:
    await publish(stack, event_type, None, envelope_json)


async def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include ``labels``."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def delivered(stack: Stack, emails: list[str]) -> Counter[str]:
    """How many emails the stack's sink holds to each of ``emails`` (lower-cased)."""
    wanted = {email.lower() for email in emails}
    counts: Counter[str] = Counter()
    for message in stack.sink.messages:
        address = parseaddr(str(message["To"]))[1].lower()
        if address in wanted:
            counts[address] += 1
    return counts
