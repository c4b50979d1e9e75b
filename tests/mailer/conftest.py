"""Fixtures for the mailer: the app on real PostgreSQL/RabbitMQ/SMTP, and a publisher of
mail jobs on the real mail exchange."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.common.bus import Bus
from libs.common.events import Envelope, MailJobs, MailRequested, make_event
from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from services.mailer.app import create_app
from services.mailer.settings import MailerSettings
from tests.support.env import TestEnv
from tests.support.owners import OwnersBus

StartMailer = Callable[..., Awaitable[TestClient[Any, Any]]]


def mailer_settings(env: TestEnv, smtp_port: int, **overrides: Any) -> MailerSettings:
    values: dict[str, Any] = {
        "database_url": env.database_url,
        "amqp_url": env.amqp_url_as("mailer"),
        "bus_prefix": env.bus_prefix,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "mail_from": "ClientPress <no-reply@example.org>",
        "mailer_retry_base_seconds": 0.05,
        "mailer_concurrency": 4,
        **env.keys.settings("mailer"),
    }
    values.update(overrides)
    return MailerSettings(**values)


async def _drop_foreign_jobs(env: TestEnv) -> None:
    """The session's other modules (invitations, identity) leave their mail jobs on the
    shared mail queue, with no mailer to take them. A mailer started here would first
    send those hundreds of emails, so a test's own job waited behind work that isn't its
    own: these tests start from an empty queue."""
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        try:
            queue = await channel.get_queue(f"{env.bus_prefix}.mailer", ensure=True)
        except aio_pika.exceptions.ChannelClosed:
            return  # not declared yet: nothing waits on it
        await queue.purge()
    finally:
        await connection.close()


@pytest.fixture
async def start_mailer(migrated_schemas: TestEnv) -> AsyncIterator[StartMailer]:
    clients: list[TestClient[Any, Any]] = []
    await _drop_foreign_jobs(migrated_schemas)

    async def start(smtp_port: int, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(mailer_settings(migrated_schemas, smtp_port, **overrides))
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def pool(pool_factory: Callable[[str], Awaitable[asyncpg.Pool]]) -> asyncpg.Pool:
    """The mailer's tables (deliveries, outbox); no mailer runs unless a test starts one."""
    return await pool_factory("mailer")


@pytest.fixture
async def publisher(migrated_schemas: TestEnv) -> AsyncIterator[Bus]:
    bus = OwnersBus(migrated_schemas)
    await bus.connect()
    yield bus  # type: ignore[misc]
    await bus.close()


def invitation_job(to: str, **context: str) -> tuple[MailRequested, str]:
    token = f"tok-{uuid.uuid4().hex}"
    job = MailRequested(
        mail_id=uuid.uuid4(),
        template="invitation",
        to=to,
        ref_type="invitation",
        ref_id=uuid.uuid4(),
        context={
            "accept_url": f"http://localhost:8080/invitations/accept?token={token}",
            "portal_title": "Acme Rebrand",
            "site_name": "Northwind Agency",
            "expires_at": "2026-12-09T15:30:00+00:00",
            "invited_by": "Jane Admin",
            **context,
        },
    )
    return job, token


def sealed(job: MailRequested) -> MailRequested:
    """As identity and invitations write it: the context sealed with MAIL_JOB_KEY."""
    return job.model_copy(update={"context": Sealer(DEVELOPMENT_KEY).seal(job.context)})


async def publish_job(bus: Bus, job: MailRequested) -> Envelope:
    envelope = make_event("mail.requested", sealed(job), source="invitations")
    await bus.publish_envelope(envelope, kind="mail")
    return envelope


async def publish_invitation(
    bus: Bus, to: str | None = None, **context: str
) -> tuple[MailRequested, str]:
    """An invitation's mail job, to ``to`` or a fresh address, published on the mail
    exchange; the job and its link's token."""
    job, token = invitation_job(to or f"client-{uuid.uuid4().hex[:8]}@example.com", **context)
    await publish_job(bus, job)
    return job, token


async def publish_jobs(bus: Bus, jobs: list[MailRequested]) -> Envelope:
    """Several jobs in one message, as invitations writes a batch's (version 2)."""
    envelope = make_event(
        "mail.requested", MailJobs(jobs=[sealed(job) for job in jobs]), source="invitations"
    )
    assert envelope.version == 2
    await bus.publish_envelope(envelope, kind="mail")
    return envelope


async def wait_for_row(
    pool: asyncpg.Pool,
    mail_id: uuid.UUID,
    ready: Callable[[asyncpg.Record], bool],
    timeout: float = 20.0,
) -> asyncpg.Record:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await pool.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", mail_id)
        if row is not None and ready(row):
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"delivery {mail_id} never got there; last: {row}")


async def outbox_events(pool: asyncpg.Pool, mail_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT exchange, body FROM outbox ORDER BY seq")
    found = []
    for row in rows:
        body = orjson.loads(row["body"])
        if body["data"].get("mail_id") == str(mail_id):
            found.append({"exchange": row["exchange"], "raw": bytes(row["body"]), **body})
    return found


async def retire_unsent(pool: asyncpg.Pool, ref_type: str) -> None:
    """Mark the queued or sending deliveries a test made (its ``ref_type``) failed, with no
    context, so no mailer of a later test picks them up."""
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', context = NULL"
        " WHERE ref_type = $1 AND status IN ('queued', 'sending')",
        ref_type,
    )
