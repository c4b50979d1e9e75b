"""SQL on the ``mailer`` schema: the deliveries table."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

from libs.common.db import Conn, Db
from libs.common.email import email_key
from libs.common.retention import delete_in_batches

from .domain import STUCK_SENDING_SECONDS, Delivery, RequestMail

WAKE_CHANNEL = "mailer_wake"


async def insert_queued(
    conn: Conn, jobs: Sequence[tuple[RequestMail, str]], trace_context: str | None = None
) -> dict[uuid.UUID, str]:
    """Record jobs ``(job, its checked To address)`` in one statement, with a wake-up for
    the senders at commit; each send continues its job's trace, else ``trace_context``.
    The mail ids recorded now, each with its status (queued, or withdrawn: mail.withdraw
    came first); one already known is left as it is."""
    rows = await conn.fetch(
        "WITH queued AS (INSERT INTO deliveries"
        " (mail_id, template, to_address, ref_type, ref_id, context, correlation_id,"
        "  trace_context, locale, status)"
        # A job withdrawn before it came (mail.withdraw) is recorded withdrawn, its link
        # never stored.
        " SELECT v.mail_id, v.template, v.to_address, v.ref_type, v.ref_id,"
        "  CASE WHEN w.mail_id IS NULL THEN v.context::jsonb END,"
        "  v.correlation_id, v.trace_context, v.locale,"
        "  CASE WHEN w.mail_id IS NULL THEN 'queued' ELSE 'withdrawn' END"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],"
        "  $6::text[], $7::text[], $8::text[], $10::text[])"
        "  AS v(mail_id, template, to_address, ref_type, ref_id, context, correlation_id,"
        "   trace_context, locale)"
        " LEFT JOIN withdrawn_mails AS w ON w.mail_id = v.mail_id"
        " ON CONFLICT (mail_id) DO NOTHING RETURNING mail_id, status)"
        " SELECT q.mail_id, q.status FROM queued AS q"
        " CROSS JOIN LATERAL (SELECT pg_notify($9, '')) AS woken",
        [job.mail_id for job, _ in jobs],
        [job.template for job, _ in jobs],
        [to_address for _, to_address in jobs],
        [job.ref_type for job, _ in jobs],
        [job.ref_id for job, _ in jobs],
        [orjson.dumps(dict(job.context)).decode() for job, _ in jobs],
        [job.correlation_id for job, _ in jobs],
        [job.trace_context or trace_context for job, _ in jobs],
        WAKE_CHANNEL,
        [(job.locale or "")[:100] or None for job, _ in jobs],
    )
    return {row["mail_id"]: row["status"] for row in rows}


async def insert_failed(conn: Conn, job: RequestMail, error: str) -> bool:
    """Record a job refused on arrival; its context (the link) is never stored, and its
    address only for the record (line breaks out: it is never used in a header)."""
    inserted = await conn.fetchval(
        "INSERT INTO deliveries (mail_id, template, to_address, ref_type, ref_id,"
        " correlation_id, status, last_error)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7)"
        " ON CONFLICT (mail_id) DO NOTHING RETURNING true",
        job.mail_id,
        job.template,
        _storable(job.to.replace("\r", " ").replace("\n", " ")[:320]),
        _storable(job.ref_type),
        job.ref_id,
        _storable(job.correlation_id),
        _storable(error),
    )
    return bool(inserted)


def _storable(text: str | None) -> str | None:
    """Without NUL, which no text column holds: a job that could not be stored as it came
    is still recorded as refused."""
    return None if text is None else text.replace("\x00", "")


async def claim_due(
    conn: Conn, limit: int, claim_id: uuid.UUID | None = None
) -> list[tuple[Delivery, datetime]]:
    """Take due rows for sending; SKIP LOCKED lets workers (and replicas) share the queue
    without two of them taking one row. Each claim counts as an attempt, so a job that
    crashes its worker still runs out of attempts."""
    rows = await conn.fetch(
        "UPDATE deliveries SET status = 'sending', claimed_at = clock_timestamp(),"
        " attempts = attempts + 1, claim_id = $2"
        " WHERE mail_id IN ("
        "   SELECT mail_id FROM deliveries"
        "   WHERE status = 'queued' AND next_attempt_at <= now()"
        # Withdrawn while a sender held it (a retry, crash recovery): never taken again.
        "   AND NOT EXISTS (SELECT 1 FROM withdrawn_mails w WHERE w.mail_id = deliveries.mail_id)"
        "   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING mail_id, template, to_address, ref_type, ref_id, context::text,"
        " attempts, correlation_id, claimed_at, created_at, trace_context, locale",
        limit,
        claim_id,
    )
    return [
        (
            Delivery(
                mail_id=row["mail_id"],
                template=row["template"],
                to_address=row["to_address"],
                ref_type=row["ref_type"],
                ref_id=row["ref_id"],
                context=orjson.loads(row["context"]) if row["context"] else {},
                attempts=row["attempts"],
                correlation_id=row["correlation_id"],
                queued_at=row["created_at"],
                trace_context=row["trace_context"],
                locale=row["locale"],
            ),
            row["claimed_at"],
        )
        for row in rows
    ]


# The claimed_at check makes each update after a send apply only to the claim that sent it:
# if crash recovery re-queued the row meanwhile, the stale worker's update does nothing.
# Each is written with its event in one statement (outbox.change_and_append).
# Many sends at once ($1 the mail ids, $2 their claims), each row's key returned for
# outbox.changes_and_append.
MARK_SENT = (
    "UPDATE deliveries AS d SET status = 'sent', sent_at = now(), context = NULL,"
    " last_error = NULL"
    " FROM unnest($1::uuid[], $2::timestamptz[]) AS s(mail_id, claimed_at)"
    " WHERE d.mail_id = s.mail_id AND d.status = 'sending' AND d.claimed_at = s.claimed_at"
    " RETURNING d.mail_id AS key"
)
MARK_FAILED = (
    "UPDATE deliveries SET status = 'failed', context = NULL, last_error = $3"
    " WHERE mail_id = $1 AND status = 'sending' AND claimed_at = $2 RETURNING 1"
)


# A try that failed for now, of a delivery withdrawn while it was under way: not retried.
END_WITHDRAWN = (
    "UPDATE deliveries AS d SET status = 'withdrawn', context = NULL, last_error = $3"
    " WHERE d.mail_id = $1 AND d.status = 'sending' AND d.claimed_at = $2"
    " AND EXISTS (SELECT 1 FROM withdrawn_mails w WHERE w.mail_id = d.mail_id) RETURNING 1"
)


RESCHEDULE = (
    "UPDATE deliveries SET status = 'queued', next_attempt_at = $3, last_error = $4"
    " WHERE mail_id = $1 AND status = 'sending' AND claimed_at = $2 RETURNING 1"
)


async def release_claim(conn: Conn, claim_id: uuid.UUID) -> bool:
    """Hand back rows of a claim that never reached SMTP; the attempt didn't happen."""
    result = await conn.execute(
        "UPDATE deliveries SET status = 'queued', claimed_at = NULL, claim_id = NULL,"
        " attempts = attempts - 1 WHERE claim_id = $1 AND status = 'sending'",
        claim_id,
    )
    return result != "UPDATE 0"


async def requeue_stuck(conn: Conn, older_than_seconds: float = STUCK_SENDING_SECONDS) -> int:
    """Rows a dead worker left in 'sending' go back to the queue (at-least-once)."""
    result = await conn.execute(
        "UPDATE deliveries SET status = 'queued', next_attempt_at = now()"
        " WHERE status = 'sending' AND claimed_at < now() - make_interval(secs => $1)",
        float(older_than_seconds),
    )
    return int(result.rsplit(" ", 1)[-1])


async def withdraw(conn: Conn, mail_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """mail.withdraw: remember the ids (a job not come yet is recorded withdrawn when it
    comes), and the deliveries still queued are withdrawn, their context gone now. One a
    sender holds ('sending') finishes its try; a retry or a crash hands it back to the
    queue, where no claim takes it (claim_due) and ``withdraw_queued`` ends it. The ids
    withdrawn now."""
    await conn.execute(
        "INSERT INTO withdrawn_mails (mail_id) SELECT unnest($1::uuid[])"
        " ON CONFLICT (mail_id) DO NOTHING",
        list(mail_ids),
    )
    rows = await conn.fetch(
        "UPDATE deliveries SET status = 'withdrawn', context = NULL"
        " WHERE mail_id = ANY($1::uuid[]) AND status = 'queued' RETURNING mail_id",
        list(mail_ids),
    )
    return [row["mail_id"] for row in rows]


async def withdraw_queued(conn: Conn) -> int:
    """Deliveries back in the queue after their withdrawal (a try under way when it came,
    then retried; a job recorded as it came): withdrawn, their context gone."""
    status = await conn.execute(
        "UPDATE deliveries AS d SET status = 'withdrawn', context = NULL"
        " FROM withdrawn_mails AS w WHERE w.mail_id = d.mail_id AND d.status = 'queued'"
    )
    return int(status.rsplit(" ", 1)[-1])


async def sealed_contexts(conn: Conn) -> list[tuple[uuid.UUID, str]]:
    """The sealed context of every delivery still to be sent: (mail id, sealed value)."""
    rows = await conn.fetch(
        "SELECT mail_id, context->>'sealed' AS sealed FROM deliveries"
        " WHERE status IN ('queued', 'sending') AND context ? 'sealed'"
    )
    return [(row["mail_id"], row["sealed"]) for row in rows]


async def reseal_contexts(conn: Conn, changes: Sequence[tuple[uuid.UUID, str, str]]) -> int:
    """``(mail id, sealed value, resealed value)``: each row's context resealed, if it
    still holds that sealed value (a row sent meanwhile holds none)."""
    result = await conn.execute(
        "UPDATE deliveries AS d SET context = jsonb_build_object('sealed', v.resealed)"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(mail_id, sealed, resealed)"
        " WHERE d.mail_id = v.mail_id AND d.context->>'sealed' = v.sealed",
        [mail_id for mail_id, _, _ in changes],
        [sealed for _, sealed, _ in changes],
        [resealed for _, _, resealed in changes],
    )
    return int(result.rsplit(" ", 1)[-1])


async def count_queued(conn: Conn) -> int:
    value = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'queued'")
    return int(value or 0)


async def get(conn: Conn, mail_id: uuid.UUID) -> Mapping[str, object] | None:
    row = await conn.fetchrow("SELECT * FROM deliveries WHERE mail_id = $1", mail_id)
    return dict(row) if row is not None else None


async def forget_addresses(conn: Conn, addresses: list[str], erased: str, before: datetime) -> int:
    """An erased person's records made before ``before`` (the erasure; a later one is a new
    person's at the same address): the address becomes ``erased``, the context (names, a
    sealed link) and the error go, and an email not sent yet never will be. The row stays,
    so the same mail job delivered again is still recognised and not sent."""
    status = await conn.execute(
        "UPDATE deliveries SET to_address = $2, context = NULL, last_error = NULL,"
        " status = CASE WHEN status = 'queued' THEN 'failed' ELSE status END"
        " WHERE lower(to_address) = ANY($1::text[]) AND created_at <= $3",
        # Lowered a character at a time, as lower() does (str.lower makes a final
        # capital sigma another letter).
        [email_key(address) for address in addresses],
        erased,
        before,
    )
    return int(status.rsplit(" ", 1)[-1])


async def prune(db: Db, finished_before: datetime) -> int:
    """Delete the records of emails sent or given up before ``finished_before`` (their
    link is already gone; this takes the address and the error too)."""
    return await delete_in_batches(
        db,
        "deliveries",
        "status IN ('sent', 'failed', 'withdrawn')"
        " AND coalesce(sent_at, claimed_at, created_at) < $1",
        finished_before,
    )


async def prune_withdrawn(db: Db, withdrawn_before: datetime) -> int:
    """Forget the ids withdrawn before ``withdrawn_before``: a job that old is stale
    (handlers.stale_job) and never sent anyway."""
    return await delete_in_batches(db, "withdrawn_mails", "withdrawn_at < $1", withdrawn_before)
