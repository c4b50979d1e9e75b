"""Rotating MAIL_JOB_KEY and WEBHOOK_SECRET_KEY (services/mailer/resealing.py): with a new
key listed first, what the mailer keeps sealed under the old one (a delivery waiting for
its retry, the webhook endpoints' secrets) is sealed afresh under the new one, so the old
key can be dropped without losing an email or a webhook."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import orjson
import pytest
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY

from libs.common.sealing import Sealer, Unsealable
from tests.mailer.conftest import StartMailer, invitation_job, wait_for_row
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


async def _queue_for_tomorrow(pool: asyncpg.Pool, to: str, context: dict[str, str]) -> uuid.UUID:
    """A delivery waiting for a retry a day away, as the mailer records one."""
    mail_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO deliveries (mail_id, template, to_address, ref_type, ref_id, context,"
        " attempts, next_attempt_at)"
        " VALUES ($1, 'invitation', $2, 'invitation', $3, $4::jsonb, 1, now() + interval '1 day')",
        mail_id,
        to,
        uuid.uuid4(),
        orjson.dumps(context).decode(),
    )
    return mail_id


async def _sealed_context(pool: asyncpg.Pool, mail_id: uuid.UUID) -> dict[str, str]:
    raw = await pool.fetchval("SELECT context::text FROM deliveries WHERE mail_id = $1", mail_id)
    return dict(orjson.loads(raw))


async def _opens(sealer: Sealer, pool: asyncpg.Pool, mail_id: uuid.UUID) -> bool:
    try:
        sealer.unseal(await _sealed_context(pool, mail_id))
    except Unsealable:
        return False
    return True


async def test_a_key_listed_second_is_emptied_so_it_can_be_dropped(
    start_mailer: StartMailer, pool: asyncpg.Pool, smtp_sink: SmtpSink
) -> None:
    old, new, gone = (Fernet.generate_key().decode() for _ in range(3))
    old_hooks, new_hooks = (Fernet.generate_key().decode() for _ in range(2))
    to = f"rotated-{uuid.uuid4().hex[:8]}@example.com"
    job, token = invitation_job(to)
    waiting = await _queue_for_tomorrow(pool, to, Sealer(old).seal(job.context))
    lost = await _queue_for_tomorrow(pool, "lost@example.com", Sealer(gone).seal(job.context))
    endpoint = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhook_endpoints (id, url, events, secret_sealed, previous_sealed,"
        " previous_until) VALUES ($1, 'https://hooks.example/in', $2, $3, $4,"
        " now() + interval '1 hour')",
        endpoint,
        ["invitation.accepted"],
        Sealer(old_hooks).seal_text("whsec_current"),
        Sealer(old_hooks).seal_text("whsec_previous"),
    )
    keys = (old, new, old_hooks, new_hooks)
    rows = (waiting, lost, endpoint, to)

    try:
        await _rotate_then_drop(start_mailer, pool, smtp_sink, keys, rows, token)
    finally:
        # The schema is the session's: other tests count the endpoints and deliveries.
        await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)
        await pool.execute("DELETE FROM deliveries WHERE mail_id = $1", lost)


async def _rotate_then_drop(
    start_mailer: StartMailer,
    pool: asyncpg.Pool,
    smtp_sink: SmtpSink,
    keys: tuple[str, str, str, str],
    rows: tuple[uuid.UUID, uuid.UUID, uuid.UUID, str],
    token: str,
) -> None:
    old, new, old_hooks, new_hooks = keys
    waiting, lost, endpoint, to = rows
    lost_context = await _sealed_context(pool, lost)
    # The rotation's step: the new key first, the old one still listed.
    first = await start_mailer(
        smtp_sink.port, mail_job_key=f"{new},{old}", webhook_secret_key=f"{new_hooks},{old_hooks}"
    )
    deadline = time.monotonic() + 30
    while not await _opens(Sealer(new), pool, waiting):
        assert time.monotonic() < deadline, "the waiting delivery was never sealed afresh"
        await asyncio.sleep(0.1)
    row = await pool.fetchrow(
        "SELECT secret_sealed, previous_sealed FROM webhook_endpoints WHERE id = $1", endpoint
    )
    hooks = Sealer(new_hooks, "WEBHOOK_SECRET_KEY")
    assert hooks.open_text(row["secret_sealed"]) == "whsec_current"
    assert hooks.open_text(row["previous_sealed"]) == "whsec_previous"
    # What no listed key opens is left as it was (it fails when it comes due).
    assert await _sealed_context(pool, lost) == lost_context
    for kind in ("mail_jobs", "webhook_secrets"):
        found = REGISTRY.get_sample_value("clientpress_sealed_under_old_keys", {"kind": kind})
        assert found == 1, (kind, found)
    await first.close()

    # The old key dropped: the delivery still goes, with its link.
    await pool.execute("UPDATE deliveries SET next_attempt_at = now() WHERE mail_id = $1", waiting)
    await start_mailer(smtp_sink.port, mail_job_key=new, webhook_secret_key=new_hooks)
    [message] = await smtp_sink.sink.wait_for(to)
    assert token in message.as_string()
    # Recorded sent once the SMTP server has taken it (the email may arrive first).
    row = await wait_for_row(pool, waiting, lambda r: r["status"] != "sending")
    assert row["status"] == "sent"
