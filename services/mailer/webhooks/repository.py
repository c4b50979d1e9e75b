"""SQL on the ``mailer`` schema: webhook endpoints and their deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.common.db import Conn, Db, columns
from libs.common.email import email_key
from libs.common.retention import delete_in_batches

WAKE_CHANNEL = "webhooks_wake"


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for sending, with what signing and sending it needs."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    payload: str
    attempts: int
    queued_at: datetime
    claimed_at: datetime
    secret_sealed: str
    previous_sealed: str | None
    previous_until: datetime | None


ENDPOINT_COLUMNS = "id, url, events, created_at"
DELIVERY_COLUMNS = (
    "id, endpoint_id, event_id, event_type, status, attempts, response_code, duration_ms,"
    " last_error, last_attempt_at, next_attempt_at, delivered_at, created_at"
)


async def insert_endpoint(
    conn: Conn, endpoint_id: uuid.UUID, url: str, events: list[str], secret_sealed: str
) -> dict[str, Any]:
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, url, events, secret_sealed) VALUES ($1, $2, $3, $4)"
        f" RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
        url,
        events,
        secret_sealed,
    )
    assert row is not None
    return dict(row)


async def list_endpoints(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )
    return [dict(r) for r in rows]


async def latest_deliveries(conn: Conn, per_endpoint: int) -> list[dict[str, Any]]:
    """Every endpoint's newest ``per_endpoint`` deliveries (Settings → Webhooks), in one
    query on webhook_deliveries_log rather than one an endpoint."""
    rows = await conn.fetch(
        f"SELECT d.* FROM webhook_endpoints e CROSS JOIN LATERAL"
        f" (SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = e.id"
        "  ORDER BY created_at DESC, id DESC LIMIT $1) d",
        per_endpoint,
    )
    return [dict(r) for r in rows]


async def get_endpoint(conn: Conn, endpoint_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    return dict(row) if row is not None else None


async def rotate_secret(
    conn: Conn, endpoint_id: uuid.UUID, secret_sealed: str, overlap_seconds: float
) -> bool:
    """The new secret signs from now on; the current one keeps signing beside it for the
    overlap (an earlier previous secret is dropped)."""
    result = await conn.execute(
        "UPDATE webhook_endpoints SET previous_sealed = secret_sealed,"
        " previous_until = now() + make_interval(secs => $3), secret_sealed = $2"
        " WHERE id = $1",
        endpoint_id,
        secret_sealed,
        float(overlap_seconds),
    )
    return result != "UPDATE 0"


async def sealed_secrets(conn: Conn) -> list[tuple[uuid.UUID, str, str | None]]:
    """Every endpoint's sealed secrets: (id, current, previous or None)."""
    rows = await conn.fetch("SELECT id, secret_sealed, previous_sealed FROM webhook_endpoints")
    return [(row["id"], row["secret_sealed"], row["previous_sealed"]) for row in rows]


async def reseal_secrets(
    conn: Conn,
    endpoint_id: uuid.UUID,
    sealed: tuple[str, str | None],
    resealed: tuple[str, str | None],
) -> bool:
    """The endpoint's secrets resealed, if they are still the ones read (a Rotate Secret
    meanwhile wins)."""
    result = await conn.execute(
        "UPDATE webhook_endpoints SET secret_sealed = $4, previous_sealed = $5"
        " WHERE id = $1 AND secret_sealed = $2 AND previous_sealed IS NOT DISTINCT FROM $3",
        endpoint_id,
        *sealed,
        *resealed,
    )
    return result != "UPDATE 0"


async def delete_endpoint(conn: Conn, endpoint_id: uuid.UUID) -> bool:
    result = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return result != "DELETE 0"


async def wanted_event_types(conn: Conn) -> list[str]:
    """The event types at least one endpoint wants."""
    rows = await conn.fetch("SELECT DISTINCT unnest(events) AS event_type FROM webhook_endpoints")
    return [row["event_type"] for row in rows]


async def queue_for_events(conn: Conn, events: Sequence[tuple[uuid.UUID, str, str]]) -> int:
    """A delivery for every endpoint that wants each event's type (once per endpoint and
    event), for many events ``(event id, type, payload)`` in one statement, and a wake-up
    for the senders at commit. How many deliveries were queued."""
    if not events:
        return 0
    count = await conn.fetchval(
        "WITH queued AS ("
        "  INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload)"
        "  SELECT gen_random_uuid(), e.id, v.event_id, v.event_type, v.payload"
        "  FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(event_id, event_type, payload)"
        "  JOIN webhook_endpoints e ON v.event_type = ANY (e.events)"
        "  ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM queued",
        *columns(events),
    )
    if count:
        await conn.execute("SELECT pg_notify($1, '')", WAKE_CHANNEL)
    return int(count or 0)


async def list_deliveries(
    conn: Conn,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on (created_at, id)."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            endpoint_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1"
            " AND (created_at, id) < ($3, $4)"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            endpoint_id,
            limit,
            after[0],
            after[1],
        )
    return [dict(r) for r in rows]


async def redeliver(
    conn: Conn, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> dict[str, Any] | None:
    """Queue a delivery again at once, with a fresh retry horizon. One already being
    sent is left to finish (None is not returned for it: it is simply in flight)."""
    row = await conn.fetchrow(
        "UPDATE webhook_deliveries SET status = 'queued', queued_at = now(),"
        " next_attempt_at = now(), delivered_at = NULL"
        " WHERE id = $1 AND endpoint_id = $2 AND status <> 'sending'"
        f" RETURNING {DELIVERY_COLUMNS}",
        delivery_id,
        endpoint_id,
    )
    if row is not None:
        await conn.execute("SELECT pg_notify($1, '')", WAKE_CHANNEL)
        return dict(row)
    row = await conn.fetchrow(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2",
        delivery_id,
        endpoint_id,
    )
    return dict(row) if row is not None else None


async def claim_due(conn: Conn, share: int, depth: int) -> Claimed | None:
    """Take one due delivery: the oldest of an endpoint holding fewer than ``share``
    deliveries under way, else the oldest of any (no worker idles while work is due). So
    a receiver that hangs or refuses takes more than its share of the workers only while
    no one else has a delivery due; taken in due order alone, one dead receiver's
    retries, always the oldest, held every worker and the others waited behind them all.
    ``depth``: how many of each endpoint's due deliveries are candidates (the workers).
    SKIP LOCKED lets workers and replicas share the queue; each claim counts as an
    attempt, so one that kills its worker still reaches the horizon."""
    row = await conn.fetchrow(
        "WITH candidates AS ("
        "  SELECT d.id, (SELECT count(*) FROM webhook_deliveries s"
        "   WHERE s.endpoint_id = e.id AND s.status = 'sending') >= $1 AS over_share"
        "  FROM webhook_endpoints e"
        "  CROSS JOIN LATERAL (SELECT id FROM webhook_deliveries"
        "   WHERE endpoint_id = e.id AND status = 'queued' AND next_attempt_at <= now()"
        "   ORDER BY next_attempt_at LIMIT $2) d),"
        " due AS ("
        "  SELECT w.id FROM webhook_deliveries w JOIN candidates c ON c.id = w.id"
        "  WHERE w.status = 'queued'"
        "  ORDER BY c.over_share, w.next_attempt_at LIMIT 1 FOR UPDATE OF w SKIP LOCKED),"
        " taken AS ("
        "  UPDATE webhook_deliveries d SET status = 'sending', claimed_at = clock_timestamp(),"
        "  attempts = attempts + 1 FROM due WHERE d.id = due.id"
        "  RETURNING d.id, d.endpoint_id, d.payload, d.attempts, d.queued_at, d.claimed_at)"
        " SELECT taken.*, e.url, e.secret_sealed,"
        "  CASE WHEN e.previous_until > now() THEN e.previous_sealed END AS previous_sealed,"
        "  e.previous_until"
        " FROM taken JOIN webhook_endpoints e ON e.id = taken.endpoint_id",
        share,
        depth,
    )
    if row is None:
        return None
    return Claimed(**dict(row))


# Each outcome applies only to the claim that sent it (claimed_at): if crash recovery
# queued the row again meanwhile, a stale worker's update does nothing.
async def mark_delivered(
    conn: Conn, claimed: Claimed, response_code: int, duration_ms: int
) -> bool:
    result = await conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),"
        " last_attempt_at = claimed_at, response_code = $3, duration_ms = $4,"
        " last_error = NULL"
        " WHERE id = $1 AND status = 'sending' AND claimed_at = $2",
        claimed.id,
        claimed.claimed_at,
        response_code,
        duration_ms,
    )
    return result != "UPDATE 0"


async def mark_retry(
    conn: Conn,
    claimed: Claimed,
    next_attempt_at: datetime | None,
    response_code: int | None,
    duration_ms: int,
    error: str | None,
) -> bool:
    """Queue again at ``next_attempt_at``, or fail for good when it is None."""
    result = await conn.execute(
        "UPDATE webhook_deliveries SET"
        " status = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'queued' END,"
        " next_attempt_at = coalesce($3, next_attempt_at), last_attempt_at = claimed_at,"
        " response_code = $4, duration_ms = $5, last_error = $6"
        " WHERE id = $1 AND status = 'sending' AND claimed_at = $2",
        claimed.id,
        claimed.claimed_at,
        next_attempt_at,
        response_code,
        duration_ms,
        error,
    )
    return result != "UPDATE 0"


async def requeue_stuck(conn: Conn, older_than_seconds: float) -> int:
    """Rows a dead worker left in 'sending' go back to the queue (at-least-once)."""
    result = await conn.execute(
        "UPDATE webhook_deliveries SET status = 'queued', next_attempt_at = now()"
        " WHERE status = 'sending' AND claimed_at < now() - make_interval(secs => $1)",
        float(older_than_seconds),
    )
    return int(result.rsplit(" ", 1)[-1])


async def forget_addresses(conn: Conn, addresses: list[str], before: datetime) -> int:
    """Delete the log's rows queued before ``before`` (the erasure) whose payload names an
    erased person's address: queued ones too (their receiver never hears of the event)."""
    status = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE queued_at <= $2 AND EXISTS"
        " (SELECT 1 FROM unnest($1::text[]) AS a WHERE position(a IN lower(payload)) > 0)",
        # Lowered a character at a time, as lower() does (str.lower makes a final
        # capital sigma another letter).
        [email_key(address) for address in addresses],
        before,
    )
    return int(status.rsplit(" ", 1)[-1])


async def prune(db: Db, finished_before: datetime) -> int:
    """Delete the log's delivered and failed rows last tried (or queued) before
    ``finished_before``: their payload names the people the events were about."""
    return await delete_in_batches(
        db,
        "webhook_deliveries",
        "status IN ('delivered', 'failed') AND coalesce(last_attempt_at, queued_at) < $1",
        finished_before,
    )
