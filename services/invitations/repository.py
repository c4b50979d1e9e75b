"""SQL against the ``invitations`` schema: invitations, the portals replica, settings."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from libs.common.db import Conn, Db

from .clients import PortalInfo

Row = asyncpg.Record

# Every read of an invitation joins the replica for the portal's title and slug.
_COLUMNS = (
    "i.id, i.email, i.email_lower, i.portal_id, p.title AS portal_title,"
    " p.slug AS portal_slug, i.status, i.sent_at, i.expires_at, i.delivery,"
    " i.delivery_error, i.last_mail_id, i.sub_client, i.invited_by, i.idempotency_key,"
    " i.accepted_user_id, i.accepted_at, i.revoked_at, i.created_at, i.send_count"
)
_JOIN = "LEFT JOIN portals p ON p.portal_id = i.portal_id"


def _returning(change_sql: str) -> str:
    """Wrap an ``UPDATE`` or ``INSERT`` (``… RETURNING *``) so it answers with the joined
    columns."""
    return f"WITH i AS ({change_sql} RETURNING *) SELECT {_COLUMNS} FROM i {_JOIN}"


# --- settings -------------------------------------------------------------------------
async def expiry_days(conn: Conn) -> int:
    value = await conn.fetchval("SELECT invitation_expiry_days FROM settings")
    return int(value)


async def set_expiry_days(conn: Conn, days: int) -> None:
    await conn.execute("UPDATE settings SET invitation_expiry_days = $1", days)


# --- portals replica ------------------------------------------------------------------
async def get_portal(conn: Db, portal_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow("SELECT * FROM portals WHERE portal_id = $1", portal_id)


async def get_portal_by_slug(conn: Db, slug: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM portals WHERE slug = $1 ORDER BY revision DESC LIMIT 1", slug
    )


async def upsert_portal(conn: Db, portal: PortalInfo) -> None:
    """Apply a portal's state only if it is newer than what we hold (events reorder)."""
    await conn.execute(
        "INSERT INTO portals (portal_id, slug, title, status, revision)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (portal_id) DO UPDATE SET slug = EXCLUDED.slug, title = EXCLUDED.title,"
        " status = EXCLUDED.status, revision = EXCLUDED.revision, updated_at = now()"
        " WHERE portals.revision < EXCLUDED.revision",
        portal.portal_id,
        portal.slug,
        portal.title,
        portal.status,
        portal.revision,
    )


# --- invitations ----------------------------------------------------------------------
async def get(conn: Conn, invitation_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.id = $1", invitation_id
    )


async def get_for_update(conn: Conn, invitation_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.id = $1 FOR UPDATE OF i",
        invitation_id,
    )


async def find_by_key(conn: Db, key: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.idempotency_key = $1", key
    )


async def find_by_token(conn: Conn, token_hash: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.token_hash = $1", token_hash
    )


async def find_pending_for_update(conn: Conn, portal_id: uuid.UUID, email_lower: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN}"
        " WHERE i.portal_id = $1 AND i.email_lower = $2 AND i.status = 'pending'"
        " FOR UPDATE OF i",
        portal_id,
        email_lower,
    )


async def insert(
    conn: Conn,
    *,
    invitation_id: uuid.UUID,
    email: str,
    email_lower: str,
    portal_id: uuid.UUID,
    token_hash: str,
    sent_at: datetime,
    expires_at: datetime,
    mail_id: uuid.UUID,
    sub_client: bool | None,
    invited_by: str | None,
    idempotency_key: str | None,
) -> Row | None:
    """The new invitation, or None when a unique rule (one pending per email+portal,
    idempotency key) said no."""
    return await conn.fetchrow(
        _returning(
            "INSERT INTO invitations (id, email, email_lower, portal_id, token_hash, sent_at,"
            " expires_at, last_mail_id, sub_client, invited_by, idempotency_key)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT DO NOTHING"
        ),
        invitation_id,
        email,
        email_lower,
        portal_id,
        token_hash,
        sent_at,
        expires_at,
        mail_id,
        sub_client,
        invited_by,
        idempotency_key,
    )


async def reissue(
    conn: Conn,
    invitation_id: uuid.UUID,
    *,
    token_hash: str,
    sent_at: datetime,
    expires_at: datetime,
    mail_id: uuid.UUID,
    idempotency_key: str | None = None,
) -> Row:
    """New token and expiry: the old hash is overwritten, so the old link dies at once."""
    row = await conn.fetchrow(
        _returning(
            "UPDATE invitations SET status = 'pending', token_hash = $2, sent_at = $3,"
            " expires_at = $4, last_mail_id = $5, send_count = send_count + 1,"
            " delivery = 'queued', delivery_error = NULL,"
            " idempotency_key = COALESCE(idempotency_key, $6)"
            " WHERE id = $1"
        ),
        invitation_id,
        token_hash,
        sent_at,
        expires_at,
        mail_id,
        idempotency_key,
    )
    assert row is not None
    return row


async def revoke(conn: Conn, invitation_id: uuid.UUID, now: datetime) -> Row:
    row = await conn.fetchrow(
        _returning(
            "UPDATE invitations SET status = 'revoked', revoked_at = $2"
            " WHERE id = $1 AND status IN ('pending', 'expired')"
        ),
        invitation_id,
        now,
    )
    assert row is not None
    return row


async def accept(conn: Conn, token_hash: str, user_id: uuid.UUID, now: datetime) -> Row | None:
    """Exactly one caller wins: the row lock serialises them and the status check fails
    for everyone after the first."""
    return await conn.fetchrow(
        _returning(
            "UPDATE invitations SET status = 'accepted', accepted_user_id = $2,"
            " accepted_at = $3"
            " WHERE token_hash = $1 AND status = 'pending' AND expires_at > $3"
        ),
        token_hash,
        user_id,
        now,
    )


async def set_delivery(
    conn: Conn, invitation_id: uuid.UUID, mail_id: uuid.UUID, delivery: str, error: str | None
) -> bool:
    """Only the latest send's outcome counts: an old failure can't mark a newer send."""
    result = await conn.execute(
        "UPDATE invitations SET delivery = $3, delivery_error = $4"
        " WHERE id = $1 AND last_mail_id = $2",
        invitation_id,
        mail_id,
        delivery,
        error,
    )
    return result != "UPDATE 0"


async def expire_due(conn: Conn, now: datetime, batch: int) -> list[Row]:
    return await conn.fetch(
        "UPDATE invitations SET status = 'expired' WHERE id IN ("
        " SELECT id FROM invitations WHERE status = 'pending' AND expires_at <= $1"
        " ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, portal_id, email",
        now,
        batch,
    )


async def page(
    conn: Conn,
    *,
    status: str | None,
    portal_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    now: datetime,
) -> list[Row]:
    """Newest first, keyset-paginated on (created_at, id). Status filters use the
    effective status, so a pending link past its expiry lists as expired."""
    where: list[str] = []
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if status == "pending":
        where.append(f"i.status = 'pending' AND i.expires_at > {arg(now)}")
    elif status == "expired":
        where.append(
            f"(i.status = 'expired' OR (i.status = 'pending' AND i.expires_at <= {arg(now)}))"
        )
    elif status is not None:
        where.append(f"i.status = {arg(status)}")
    if portal_id is not None:
        where.append(f"i.portal_id = {arg(portal_id)}")
    if after is not None:
        where.append(f"(i.created_at, i.id) < ({arg(after[0])}, {arg(after[1])})")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} {clause}"
        f" ORDER BY i.created_at DESC, i.id DESC LIMIT {arg(limit)}",
        *args,
    )
