"""SQL of the Activity log (``identity.activity``): written from events, read newest
first in keyset pages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import orjson

from libs.common.db import Conn, Db, columns, from_row
from libs.common.email import email_key
from libs.common.retention import delete_in_batches

from .domain import ActivityEntry

_COLUMNS = (
    "id, occurred_at, action, actor_type, actor_id, actor_name, object_type, object_id,"
    " object_label, portal_id, details"
)


def _entry(row: asyncpg.Record) -> ActivityEntry:
    return from_row(ActivityEntry, row, details=orjson.loads(row["details"]))


async def insert_many(conn: Conn, entries: Sequence[ActivityEntry]) -> list[bool]:
    """One statement for all; for each, True when recorded now. The event id is the key,
    so a second delivery adds nothing."""
    recorded = {
        row["id"]
        for row in await conn.fetch(
            f"INSERT INTO activity ({_COLUMNS})"
            " SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[],"
            " $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[],"
            " $11::jsonb[])"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            *columns(
                entries,
                "id",
                "occurred_at",
                "action",
                "actor_type",
                "actor_id",
                "actor_name",
                "object_type",
                "object_id",
                "object_label",
                "portal_id",
            ),
            [orjson.dumps(e.details).decode() for e in entries],
        )
    }
    return [e.id in recorded for e in entries]


async def page(
    conn: Db,
    *,
    actor_id: str | None,
    action: str | None,
    portal_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ActivityEntry]:
    """Newest first; ``after``: the last entry of the previous page (keyset)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM activity"
        " WHERE ($1::text IS NULL OR actor_id = $1)"
        " AND ($2::text IS NULL OR action = $2)"
        " AND ($3::uuid IS NULL OR portal_id = $3)"
        " AND ($4::timestamptz IS NULL OR (occurred_at, id) < ($4, $5::uuid))"
        " ORDER BY occurred_at DESC, id DESC LIMIT $6",
        actor_id,
        action,
        portal_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_entry(row) for row in rows]


# The log is kept for good by default, so a DISTINCT ON over it would read every entry
# each time the screen opens: this skips from one actor to the next along
# activity_by_actor (a loose index scan), then takes each one's latest entry from it.
ACTORS_QUERY = (
    "WITH RECURSIVE ids AS ("
    " (SELECT actor_id FROM activity ORDER BY actor_id LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT a.actor_id FROM activity a WHERE a.actor_id > ids.actor_id"
    "  ORDER BY a.actor_id LIMIT 1) FROM ids WHERE ids.actor_id IS NOT NULL)"
    " SELECT latest.actor_id, latest.actor_type, latest.actor_name FROM ids"
    " CROSS JOIN LATERAL (SELECT actor_id, actor_type, actor_name, occurred_at, id"
    "  FROM activity a WHERE a.actor_id = ids.actor_id"
    "  ORDER BY a.occurred_at DESC, a.id DESC LIMIT 1) AS latest"
    " ORDER BY latest.occurred_at DESC, latest.id DESC LIMIT $1"
)


async def actors(conn: Db, limit: int) -> list[asyncpg.Record]:
    """Everyone who appears in the log (for the Actor filter), most recently active first,
    with the name of their latest entry."""
    return await conn.fetch(ACTORS_QUERY, limit)


async def user_email(conn: Conn, user_id: uuid.UUID) -> str | None:
    value = await conn.fetchval("SELECT email FROM users WHERE id = $1", user_id)
    return str(value) if value is not None else None


async def anonymise(conn: Conn, user_id: uuid.UUID, email: str, label: str) -> int:
    """Put ``label`` where an entry names the erased person: as its actor, its object (an
    invitation's address) or the invitation's sender. The entry stays: the audit log keeps
    that something happened, and to which id."""
    status = await conn.execute(
        "UPDATE activity SET"
        " actor_name = CASE WHEN actor_type = 'user' AND actor_id = $1"
        "   THEN $3 ELSE actor_name END,"
        " object_label = CASE WHEN lower(object_label) = $2 THEN $3 ELSE object_label END,"
        " details = CASE WHEN lower(details->>'invited_by') = $2"
        "   THEN jsonb_set(details, '{invited_by}', to_jsonb($3::text)) ELSE details END"
        " WHERE (actor_type = 'user' AND actor_id = $1) OR lower(object_label) = $2"
        " OR lower(details->>'invited_by') = $2",
        str(user_id),
        # A character at a time, as lower() does: str.lower makes a final capital sigma
        # another letter.
        email_key(email),
        label,
    )
    return int(status.rsplit(" ", 1)[-1])


async def prune(db: Db, before: datetime) -> int:
    """Delete the entries of changes made before ``before`` (IDENTITY_ACTIVITY_RETENTION_DAYS)."""
    return await delete_in_batches(db, "activity", "occurred_at < $1", before)
