"""SQL against the ``invitations`` schema: invitations, the portals replica, settings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import asyncpg

from libs.common.db import Conn, Db, columns
from libs.common.events import Envelope
from libs.common.outbox import write_with_keyed_events
from libs.common.retention import clear_in_batches

from .clients import PortalInfo

Row = asyncpg.Record

# Every read of an invitation joins the replica for the portal's title and slug.
_COLUMNS = (
    "i.id, i.email, i.email_lower, i.portal_id, p.title AS portal_title,"
    " p.slug AS portal_slug, i.status, i.sent_at, i.expires_at, i.delivery,"
    " i.delivery_error, i.last_mail_id, i.sub_client, i.invited_by,"
    # A group's rows carry the group's key (the request's), unless they got their own.
    " COALESCE(i.idempotency_key, g.idempotency_key) AS idempotency_key,"
    " i.accepted_user_id, i.accepted_at, i.revoked_at, i.created_at, i.send_count,"
    " i.delivery_next_attempt_at, i.accept_claim_until, i.expires_in_days, i.expiry_chosen,"
    " i.personal_message, i.invitee_name, i.send_reason, i.reminded_at, i.staff_role,"
    " i.group_id, i.token_hash, i.locale, p.status AS portal_status, i.last_request_key,"
    " i.invited_by_id"
)
_JOIN = (
    "LEFT JOIN portals p ON p.portal_id = i.portal_id"
    " LEFT JOIN invitation_groups g ON g.id = i.group_id"
)
# A group's invitations in the order their portals were asked for.
_GROUP_ORDER = " ORDER BY array_position(g.portal_ids, i.portal_id), i.created_at, i.id"


def _returning(change_sql: str) -> str:
    """Wrap an ``UPDATE`` or ``INSERT`` (``… RETURNING *``) so it answers with the joined
    columns."""
    return f"WITH i AS ({change_sql} RETURNING *) SELECT {_COLUMNS} FROM i {_JOIN}"


# --- settings -------------------------------------------------------------------------
async def expiry_days(conn: Db, *, for_update: bool = False) -> int:
    """``for_update``: lock the settings row until the transaction ends (a change)."""
    lock = " FOR UPDATE" if for_update else ""
    value = await conn.fetchval("SELECT invitation_expiry_days FROM settings" + lock)
    return int(value)


async def set_expiry_days(conn: Conn, days: int) -> None:
    await conn.execute("UPDATE settings SET invitation_expiry_days = $1", days)


async def reminder_days(conn: Conn) -> int:
    value = await conn.fetchval("SELECT invitation_reminder_days FROM settings")
    return int(value)


async def set_reminder_days(conn: Conn, days: int) -> None:
    await conn.execute("UPDATE settings SET invitation_reminder_days = $1", days)


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


@dataclass(frozen=True)
class FirstLook:
    """What an invitation needs from this service's own tables before it is checked:
    whether its idempotency key made an invitation already, the portal as the replica
    holds it (None: not there), and the Invitation Link Expiry setting."""

    key_taken: bool
    portal: PortalInfo | None
    expiry_days: int


async def first_look(
    conn: Db, key: str | None, portal_id: uuid.UUID | None, slug: str | None
) -> FirstLook:
    """``FirstLook`` in one round trip instead of three (the key, the portal, the setting):
    the portal by its id, else the latest by its slug."""
    row = await conn.fetchrow(
        "SELECT s.invitation_expiry_days,"
        " EXISTS (SELECT 1 FROM invitations i WHERE i.idempotency_key = $1) AS key_taken,"
        " p.portal_id, p.slug, p.title, p.status, p.revision"
        " FROM settings s LEFT JOIN LATERAL ("
        "  (SELECT * FROM portals WHERE portal_id = $2)"
        "  UNION ALL"
        "  (SELECT * FROM portals WHERE $2::uuid IS NULL AND slug = $3"
        "   ORDER BY revision DESC LIMIT 1)"
        "  LIMIT 1) p ON true",
        key,
        portal_id,
        slug,
    )
    assert row is not None
    portal = None if row["portal_id"] is None else PortalInfo.of_row(row)
    return FirstLook(row["key_taken"], portal, int(row["invitation_expiry_days"]))


async def senders_taken(conn: Db, senders: list[str], since: datetime) -> dict[str, int]:
    """The requests each sender had taken in the minutes after ``since`` (its window),
    committed: runs under way on other connections are not seen, so together they may pass
    a cap by what they hold, at most the consumer's prefetch each, rather than wait on one
    another. At most 61 rows a sender, however busy."""
    rows = await conn.fetch(
        "SELECT s.sender, coalesce((SELECT sum(c.requests) FROM sender_counts c"
        "  WHERE c.sender = s.sender AND c.minute > $2), 0) AS taken"
        " FROM unnest($1::text[]) AS s(sender)",
        senders,
        since,
    )
    return {r["sender"]: int(r["taken"]) for r in rows}


async def forget_sender_counts(conn: Db, since: datetime) -> int:
    """Counted minutes that have left the cap's window (at or before ``since``)."""
    status = await conn.execute("DELETE FROM sender_counts WHERE minute <= $1", since)
    return int(status.split()[-1])


async def record_sender_requests(conn: Db, taken: list[tuple[str, datetime]]) -> None:
    """Count each (sender, moment) in its minute."""
    await conn.execute(
        "INSERT INTO sender_counts AS c (sender, minute, requests)"
        " SELECT sender, date_trunc('minute', at), count(*)"
        " FROM unnest($1::text[], $2::timestamptz[]) AS t(sender, at) GROUP BY 1, 2"
        " ORDER BY 1, 2"
        " ON CONFLICT (sender, minute) DO UPDATE SET requests = c.requests + EXCLUDED.requests",
        [sender for sender, _ in taken],
        [at for _, at in taken],
    )


async def sender_full_minute(conn: Db, sender: str, since: datetime, cap: int) -> datetime | None:
    """The newest counted minute of ``sender`` (after ``since``) by which its latest
    ``cap`` requests are reached: when it leaves the window, the next request fits."""
    minute: datetime | None = await conn.fetchval(
        "SELECT minute FROM (SELECT minute, sum(requests) OVER (ORDER BY minute DESC) AS upto"
        "  FROM sender_counts WHERE sender = $1 AND minute > $2) AS t"
        " WHERE upto >= $3 ORDER BY minute DESC LIMIT 1",
        sender,
        since,
        cap,
    )
    return minute


async def find_by_key(conn: Db, key: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.idempotency_key = $1", key
    )


async def find_by_token(conn: Conn, token_hash: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.token_hash = $1", token_hash
    )


async def find_all_by_token(conn: Db, token_hash: str) -> list[Row]:
    """Whose current link this is: one invitation, or the rows of a group sent together."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.token_hash = $1{_GROUP_ORDER}",
        token_hash,
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
    portal_id: uuid.UUID | None,
    token_hash: str,
    sent_at: datetime,
    expires_at: datetime,
    mail_id: uuid.UUID,
    sub_client: bool | None,
    invited_by: str | None,
    idempotency_key: str | None,
    expires_in_days: int | None = None,
    expiry_chosen: bool = False,
    personal_message: str | None = None,
    invitee_name: str | None = None,
    staff_role: str | None = None,
    group_id: uuid.UUID | None = None,
    locale: str | None = None,
    invited_by_id: uuid.UUID | None = None,
) -> Row | None:
    """The new invitation, or None when a unique rule (one pending per email+portal, or
    per email for staff invitations; idempotency key) said no. A staff invitation has a
    ``staff_role`` and no portal, and ``invited_by_id``, its sender, when known."""
    return await conn.fetchrow(
        _returning(
            "INSERT INTO invitations (id, email, email_lower, portal_id, token_hash, sent_at,"
            " expires_at, last_mail_id, sub_client, invited_by, idempotency_key,"
            " expires_in_days, expiry_chosen, personal_message, invitee_name, staff_role,"
            " group_id, locale, invited_by_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
            " $17, $18, $19) ON CONFLICT DO NOTHING"
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
        expires_in_days,
        expiry_chosen,
        personal_message,
        invitee_name,
        staff_role,
        group_id,
        locale,
        invited_by_id,
    )


@dataclass(frozen=True)
class NewInvitation:
    """A first invitation's row (a group's: with its group), as ``insert`` takes it (one
    or many)."""

    invitation_id: uuid.UUID
    email: str
    email_lower: str
    portal_id: uuid.UUID
    token_hash: str
    sent_at: datetime
    expires_at: datetime
    mail_id: uuid.UUID
    sub_client: bool | None
    invited_by: str | None
    idempotency_key: str | None
    expires_in_days: int | None = None
    expiry_chosen: bool = False
    personal_message: str | None = None
    invitee_name: str | None = None
    locale: str | None = None
    group_id: uuid.UUID | None = None


_NEW_FIELDS = tuple(f.name for f in fields(NewInvitation))
# The columns NewInvitation fills, in its fields' order, and their types.
_NEW_INSERT = (
    "INSERT INTO invitations (id, email, email_lower, portal_id, token_hash, sent_at,"
    " expires_at, last_mail_id, sub_client, invited_by, idempotency_key, expires_in_days,"
    " expiry_chosen, personal_message, invitee_name, locale, group_id)"
)
_NEW_TYPES = (
    "uuid", "text", "text", "uuid", "text", "timestamptz", "timestamptz", "uuid", "bool",
    "text", "text", "int", "bool", "text", "text", "text", "uuid",
)  # fmt: skip


async def insert_many(conn: Conn, rows: Sequence[NewInvitation]) -> int:
    """Many first invitations in one statement; returns how many were written (fewer
    when a unique rule said no to some: the caller redoes the rows one by one)."""
    arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_NEW_TYPES, start=1))
    written = await conn.fetchval(
        f"WITH i AS ({_NEW_INSERT} SELECT * FROM unnest({arrays})"
        " ON CONFLICT DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM i",
        *columns(rows, *_NEW_FIELDS),
    )
    return int(written)


# A first invitation on its way into ``insert_firsts``: its row, its events (built in its
# request's context: correlation id) and its request's trace context.
FirstWrite = tuple[NewInvitation, Sequence[Envelope], str | None]


async def insert_firsts(db: Db, firsts: Sequence[FirstWrite], reason: str) -> dict[uuid.UUID, Row]:
    """First invitations, each with its first link and its events, in one statement
    (atomic without a transaction: one round trip for them all, instead of seven each).
    Answers the rows written, by id. A row that a unique rule said no to, or whose
    idempotency key names a group, is not written, nor are its link and events: its
    caller takes the transaction's path, which resends a pending invitation or answers
    the key."""
    rows = [row for row, _, _ in firsts]
    arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_NEW_TYPES, start=1))
    found = await write_with_keyed_events(
        db,
        f"change AS ({_NEW_INSERT} SELECT * FROM unnest({arrays})"
        f" AS n({', '.join(_NEW_FIELDS)})"
        " WHERE NOT EXISTS (SELECT 1 FROM invitation_groups g"
        "  WHERE g.idempotency_key = n.idempotency_key)"
        " ON CONFLICT DO NOTHING RETURNING *, id AS key),"
        " link AS (INSERT INTO invitation_links"
        " (token_hash, invitation_id, email_lower, issued_at, expires_at, reason)"
        f" SELECT token_hash, id, email_lower, sent_at, expires_at, ${len(_NEW_FIELDS) + 1}::text"
        " FROM change)",
        [*columns(rows, *_NEW_FIELDS), reason],
        [(row.invitation_id, event, trace) for row, events, trace in firsts for event in events],
        result=f"SELECT {_COLUMNS} FROM change i {_JOIN}",
    )
    return {row["id"]: row for row in found}


async def reissue(
    conn: Conn,
    invitation_id: uuid.UUID,
    *,
    token_hash: str,
    sent_at: datetime,
    expires_at: datetime,
    mail_id: uuid.UUID,
    idempotency_key: str | None = None,
    expires_in_days: int | None = None,
    expiry_chosen: bool = False,
    personal_message: str | None = None,
    invitee_name: str | None = None,
    reason: str | None = None,
    locale: str | None = None,
) -> Row:
    """New token and expiry: the old hash is overwritten, so the old link dies at once."""
    row = await conn.fetchrow(
        _returning(
            "UPDATE invitations SET status = 'pending', token_hash = $2, sent_at = $3,"
            " expires_at = $4, last_mail_id = $5, send_count = send_count + 1,"
            " delivery = 'queued', delivery_error = NULL, delivery_next_attempt_at = NULL,"
            " idempotency_key = COALESCE(idempotency_key, $6),"
            " last_request_key = COALESCE($6, last_request_key),"
            " expires_in_days = $7, expiry_chosen = $8, personal_message = $9,"
            " invitee_name = $10, send_reason = $11, locale = $12"
            " WHERE id = $1"
        ),
        invitation_id,
        token_hash,
        sent_at,
        expires_at,
        mail_id,
        idempotency_key,
        expires_in_days,
        expiry_chosen,
        personal_message,
        invitee_name,
        reason,
        locale,
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


async def reserve(
    conn: Conn, token_hash: str, claim: uuid.UUID, now: datetime, until: datetime
) -> Row | None:
    """Spend the link for one request: a pending one in time whose portal is Active (none,
    for a staff invitation), or an acceptance whose lease is over while the link is in
    time (never after: a leaked link takes nothing over). Exactly one caller
    wins: the row lock serialises them and the conditions fail for everyone after the
    first (the ``SET`` reads the row as it was)."""
    return await conn.fetchrow(
        _returning(
            "UPDATE invitations SET status = 'accepting', accept_claim = $2,"
            " accept_claim_until = $4, accept_reopenable = (status = 'pending')"
            " WHERE token_hash = $1 AND group_id IS NULL"
            " AND ((status = 'pending' AND expires_at > $3 AND (portal_id IS NULL OR EXISTS"
            " (SELECT 1 FROM portals p WHERE p.portal_id = invitations.portal_id"
            " AND p.status = 'active')))"
            " OR (status = 'accepting' AND accept_claim_until <= $3 AND expires_at > $3))"
        ),
        token_hash,
        claim,
        now,
        until,
    )


async def accept(
    conn: Conn, token_hash: str, claim: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> list[Row]:
    """Finish the acceptance this claim holds (a group's link: each of its rows the claim
    holds); empty when another request holds it now."""
    return await conn.fetch(
        _returning(
            "UPDATE invitations SET status = 'accepted', accepted_user_id = $3,"
            " accepted_at = $4, accept_claim = NULL, accept_claim_until = NULL"
            " WHERE token_hash = $1 AND status = 'accepting' AND accept_claim = $2"
        )
        + _GROUP_ORDER,
        token_hash,
        claim,
        user_id,
        now,
    )


async def reopen(conn: Conn, token_hash: str, claim: uuid.UUID) -> bool:
    """Hand an acceptance that made nothing back to 'pending' (only a claim taken straight
    from 'pending': after a takeover, an earlier try may have made the account)."""
    result = await conn.execute(
        "UPDATE invitations SET status = 'pending', accept_claim = NULL,"
        " accept_claim_until = NULL, accept_reopenable = false"
        " WHERE token_hash = $1 AND status = 'accepting' AND accept_claim = $2"
        " AND accept_reopenable",
        token_hash,
        claim,
    )
    return result != "UPDATE 0"


async def end_claim(conn: Conn, token_hash: str, claim: uuid.UUID, now: datetime) -> None:
    """End the lease now, so the same link may take the acceptance over at once."""
    await conn.execute(
        "UPDATE invitations SET accept_claim_until = $3"
        " WHERE token_hash = $1 AND status = 'accepting' AND accept_claim = $2",
        token_hash,
        claim,
        now,
    )


# A send's outcome: (invitation id, mail id, "sent" or "failed", the error or None).
Outcome = tuple[uuid.UUID, uuid.UUID, str, str | None]


async def set_deliveries(conn: Conn, outcomes: Sequence[Outcome]) -> list[bool]:
    """Many sends' outcomes in one statement (the ``mail.sent`` events that arrived
    together). Only the latest send's outcome counts: an old failure can't mark a newer
    send. For each, True when it marked its invitation."""
    if not outcomes:
        return []
    marked = {
        (row["id"], row["mail_id"])
        for row in await conn.fetch(
            "UPDATE invitations AS i SET delivery = u.delivery, delivery_error = u.error,"
            " delivery_next_attempt_at = NULL"
            " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])"
            " AS u(id, mail_id, delivery, error)"
            " WHERE i.id = u.id AND i.last_mail_id = u.mail_id"
            " RETURNING i.id, u.mail_id",
            *columns(outcomes),
        )
    }
    return [(invitation_id, mail_id) in marked for invitation_id, mail_id, _, _ in outcomes]


async def set_delivery_retrying(
    conn: Conn,
    invitation_id: uuid.UUID,
    mail_id: uuid.UUID,
    next_attempt_at: datetime,
    reason: str,
) -> bool:
    """The latest send waits for its next try. Never over a final outcome, nor over a
    later try's announcement (events can arrive out of order; next tries only move on)."""
    result = await conn.execute(
        "UPDATE invitations SET delivery = 'retrying', delivery_error = $4,"
        " delivery_next_attempt_at = $3"
        " WHERE id = $1 AND last_mail_id = $2 AND delivery IN ('queued', 'retrying')"
        " AND (delivery_next_attempt_at IS NULL OR delivery_next_attempt_at < $3)",
        invitation_id,
        mail_id,
        next_attempt_at,
        reason,
    )
    return result != "UPDATE 0"


async def withdraw_mails(conn: Conn, mail_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Of these emails, the ones no pending invitation is waiting for any more (closed,
    or given a newer link): their invitations show them withdrawn, unless an outcome came
    already. Returns those ids."""
    rows = await conn.fetch(
        "WITH kept AS (SELECT DISTINCT last_mail_id AS mail_id FROM invitations"
        "  WHERE last_mail_id = ANY($1::uuid[]) AND status = 'pending'),"
        " gone AS (SELECT m AS mail_id FROM unnest($1::uuid[]) AS m"
        "  WHERE m NOT IN (SELECT mail_id FROM kept)),"
        " marked AS (UPDATE invitations SET delivery = 'withdrawn', delivery_error = NULL,"
        "  delivery_next_attempt_at = NULL"
        "  WHERE last_mail_id IN (SELECT mail_id FROM gone) AND delivery IN ('queued', 'retrying')"
        "  RETURNING 1)"
        " SELECT mail_id FROM gone, (SELECT count(*) FROM marked) AS m ORDER BY mail_id",
        mail_ids,
    )
    return [row["mail_id"] for row in rows]


async def counts_by_status(conn: Conn, now: datetime) -> dict[str, int]:
    """Every invitation by status; a pending one past its expiry counts as expired, as the
    list shows it."""
    rows = await conn.fetch(
        "SELECT CASE WHEN status = 'pending' AND expires_at <= $1 THEN 'expired'"
        " ELSE status END AS status, count(*) AS n FROM invitations GROUP BY 1",
        now,
    )
    return {row["status"]: int(row["n"]) for row in rows}


async def stalled_acceptances(
    conn: Conn, now: datetime, quiet_since: datetime, batch: int
) -> list[Row]:
    """Acceptances whose lease is over (their holder died or gave up) and whose link is
    over too or went unused since ``quiet_since`` (domain.stalled_acceptance_becomes),
    locked; one a request holds or takes over just now is skipped, not waited for."""
    return await conn.fetch(
        "SELECT id, status, expires_at, accept_claim_until FROM invitations"
        " WHERE status = 'accepting' AND (accept_claim_until <= $2"
        " OR (accept_claim_until <= $1 AND expires_at <= $1))"
        " ORDER BY accept_claim_until LIMIT $3 FOR UPDATE SKIP LOCKED",
        now,
        quiet_since,
        batch,
    )


async def end_stalled(conn: Conn, invitation_id: uuid.UUID, status: str) -> Row:
    """A stalled acceptance becomes ``status`` (pending or expired), its claim gone, so
    its late holder can't finish it. Raises UniqueViolationError when pending would make a
    second pending invitation to the same person (and portal)."""
    row = await conn.fetchrow(
        "WITH i AS (UPDATE invitations SET status = $2, accept_claim = NULL,"
        " accept_claim_until = NULL, accept_reopenable = false"
        " WHERE id = $1 AND status = 'accepting' RETURNING *)"
        " SELECT i.id, i.portal_id, i.email, i.group_id, i.staff_role, i.invited_by,"
        " i.last_mail_id, i.delivery,"
        " COALESCE(i.idempotency_key, g.idempotency_key) AS idempotency_key"
        " FROM i LEFT JOIN invitation_groups g ON g.id = i.group_id",
        invitation_id,
        status,
    )
    assert row is not None
    return row


async def expire_due(conn: Conn, now: datetime, batch: int) -> list[Row]:
    return await conn.fetch(
        "WITH i AS (UPDATE invitations SET status = 'expired' WHERE id IN ("
        " SELECT id FROM invitations WHERE status = 'pending' AND expires_at <= $1"
        " ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING *)"
        " SELECT i.id, i.portal_id, i.email, i.group_id, i.staff_role, i.invited_by,"
        " i.last_mail_id, i.delivery,"
        " COALESCE(i.idempotency_key, g.idempotency_key) AS idempotency_key"
        " FROM i LEFT JOIN invitation_groups g ON g.id = i.group_id",
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
    email_lower: str | None = None,
) -> list[Row]:
    """Newest first, keyset-paginated on (created_at, id). Status filters use the
    effective status, so a pending link past its expiry lists as expired."""
    # The Invitations screen's: client invitations (staff ones are on the Users screen).
    where: list[str] = ["i.staff_role IS NULL"]
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
    elif status == "accepted":
        where.append("i.status IN ('accepted', 'accepting')")
    elif status is not None:
        where.append(f"i.status = {arg(status)}")
    if portal_id is not None:
        where.append(f"i.portal_id = {arg(portal_id)}")
    if email_lower is not None:
        where.append(f"i.email_lower = {arg(email_lower)}")
    if after is not None:
        where.append(f"(i.created_at, i.id) < ({arg(after[0])}, {arg(after[1])})")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} {clause}"
        f" ORDER BY i.created_at DESC, i.id DESC LIMIT {arg(limit)}",
        *args,
    )


def status_counts_query(
    *, portal_id: uuid.UUID | None, email_lower: str | None, now: datetime
) -> tuple[str, list[object]]:
    """The tabs' counts: one count per stored status, each a range of
    invitations_client_counts (0012), which holds only client invitations with their status,
    portal and expiry, so that it is counted alone (an index-only scan), never reading the
    table's rows; an email's few rows come from invitations_email_newest."""
    args: list[object] = [now]
    extra = " AND i.staff_role IS NULL"  # client invitations only, as the list
    if portal_id is not None:
        args.append(portal_id)
        extra += f" AND i.portal_id = ${len(args)}"
    if email_lower is not None:
        args.append(email_lower)
        extra += f" AND i.email_lower = ${len(args)}"
    sql = (
        "SELECT"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'pending'{extra}) AS pending,"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'pending'"
        f"  AND i.expires_at <= $1{extra}) AS overdue,"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'accepted'{extra}) AS accepted,"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'accepting'{extra}) AS accepting,"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'expired'{extra}) AS expired,"
        f" (SELECT count(*) FROM invitations i WHERE i.status = 'revoked'{extra}) AS revoked"
    )
    return sql, args


async def status_counts(
    conn: Conn, *, portal_id: uuid.UUID | None, email_lower: str | None, now: datetime
) -> dict[str, int]:
    """How many invitations each status tab holds (effective status, as the list)."""
    sql, args = status_counts_query(portal_id=portal_id, email_lower=email_lower, now=now)
    row = await conn.fetchrow(sql, *args)
    assert row is not None
    counts = {
        "pending": row["pending"] - row["overdue"],
        "accepted": row["accepted"] + row["accepting"],
        "expired": row["expired"] + row["overdue"],
        "revoked": row["revoked"],
    }
    return {"all": sum(counts.values()), **counts}


# --- staff invitations (Users → Invite Staff) ------------------------------------------
async def find_pending_staff_for_update(conn: Conn, email_lower: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN}"
        " WHERE i.staff_role IS NOT NULL AND i.email_lower = $1 AND i.status = 'pending'"
        " FOR UPDATE OF i",
        email_lower,
    )


async def set_staff_role(conn: Conn, invitation_id: uuid.UUID, role: str) -> None:
    await conn.execute(
        "UPDATE invitations SET staff_role = $2 WHERE id = $1 AND staff_role IS NOT NULL",
        invitation_id,
        role,
    )


async def open_staff_invitations(conn: Db, limit: int) -> list[Row]:
    """The Users screen's: staff invitations still pending or expired (a Resend can still
    send those), newest first."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN}"
        " WHERE i.staff_role IS NOT NULL AND i.status IN ('pending', 'expired')"
        " ORDER BY i.created_at DESC, i.id DESC LIMIT $1",
        limit,
    )


async def open_staff_sent_by(
    conn: Conn, user_id: uuid.UUID, before: datetime | None
) -> list[uuid.UUID]:
    """The staff invitations this user sent before ``before`` (the event that took their
    right to send them; None: whenever) still pending or expired: a Resend could still
    send those. Locked, so a Resend or a reserve waits for the revocation."""
    rows = await conn.fetch(
        "SELECT id FROM invitations WHERE invited_by_id = $1"
        " AND status IN ('pending', 'expired') AND ($2::timestamptz IS NULL OR created_at <= $2)"
        " ORDER BY id FOR UPDATE",
        user_id,
        before,
    )
    return [r["id"] for r in rows]


# --- batches (issue 16) ---------------------------------------------------------------
async def find_batch_keys(conn: Db, keys: list[str]) -> list[Row]:
    return await conn.fetch(
        "SELECT key, invitation_id, portal_id, email_lower, outcome FROM batch_keys"
        " WHERE key = ANY($1::text[])",
        keys,
    )


async def record_batch_key(
    conn: Conn,
    key: str,
    invitation_id: uuid.UUID,
    portal_id: uuid.UUID,
    email_lower: str,
    outcome: str,
) -> bool:
    """False when a concurrent request recorded this key first."""
    done = await conn.fetchval(
        "INSERT INTO batch_keys (key, invitation_id, portal_id, email_lower, outcome)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
        key,
        invitation_id,
        portal_id,
        email_lower,
        outcome,
    )
    return bool(done)


async def record_batch_keys(
    conn: Conn, portal_id: uuid.UUID, done: Sequence[tuple[str, uuid.UUID, str, str]]
) -> int:
    """Many rows' keys (key, invitation id, email_lower, outcome) at once; returns how
    many were new (fewer: a concurrent request recorded some first)."""
    written = await conn.fetchval(
        "WITH k AS (INSERT INTO batch_keys (key, invitation_id, portal_id, email_lower, outcome)"
        " SELECT key, invitation_id, $5, email_lower, outcome"
        " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[])"
        " AS d(key, invitation_id, email_lower, outcome)"
        " ON CONFLICT DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM k",
        [d[0] for d in done],
        [d[1] for d in done],
        [d[2] for d in done],
        [d[3] for d in done],
        portal_id,
    )
    return int(written)


async def pending_emails(conn: Db, portal_id: uuid.UUID, email_lowers: list[str]) -> set[str]:
    """Which of these addresses have a pending invitation to the portal (a send resends)."""
    rows = await conn.fetch(
        "SELECT email_lower FROM invitations"
        " WHERE portal_id = $1 AND status = 'pending' AND email_lower = ANY($2::text[])",
        portal_id,
        email_lowers,
    )
    return {row["email_lower"] for row in rows}


# --- every link sent (invitation_links) ----------------------------------------------------
async def record_link(
    conn: Conn,
    *,
    token_hash: str,
    invitation_id: uuid.UUID,
    email_lower: str,
    issued_at: datetime,
    expires_at: datetime,
    reason: str,
) -> None:
    """Keep the new link's hash, and mark the invitation's earlier link replaced."""
    await conn.execute(
        "WITH earlier AS (UPDATE invitation_links SET replaced_at = $4"
        " WHERE invitation_id = $2 AND replaced_at IS NULL)"
        " INSERT INTO invitation_links"
        " (token_hash, invitation_id, email_lower, issued_at, expires_at, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        token_hash,
        invitation_id,
        email_lower,
        issued_at,
        expires_at,
        reason,
    )


async def record_first_links(conn: Conn, rows: Sequence[NewInvitation], reason: str) -> None:
    """The first link of each of these new invitations (none has an earlier one)."""
    await conn.execute(
        "INSERT INTO invitation_links"
        " (token_hash, invitation_id, email_lower, issued_at, expires_at, reason)"
        " SELECT token_hash, invitation_id, email_lower, issued_at, expires_at, $6"
        " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[],"
        " $5::timestamptz[]) AS l(token_hash, invitation_id, email_lower, issued_at, expires_at)",
        *columns(rows, "token_hash", "invitation_id", "email_lower", "sent_at", "expires_at"),
        reason,
    )


async def find_link(conn: Db, token_hash: str) -> Row | None:
    """A link that is known, current or not, with its invitation's stored status (a
    group's link: its first invitation's; find_links has them all)."""
    found = await find_links(conn, token_hash)
    return found[0] if found else None


async def find_links(conn: Db, token_hash: str) -> list[Row]:
    """A link that is known, once per invitation it was sent for, with each invitation's
    stored status and group."""
    return await conn.fetch(
        "SELECT l.invitation_id, l.issued_at, l.expires_at, l.replaced_at, i.status,"
        " i.group_id, i.token_hash = l.token_hash AS current"
        " FROM invitation_links l JOIN invitations i ON i.id = l.invitation_id"
        " WHERE l.token_hash = $1 ORDER BY l.invitation_id",
        token_hash,
    )


async def sends_of_invitation(
    conn: Conn, invitation_id: uuid.UUID, since: datetime, reason: str | None = None
) -> list[datetime]:
    """When this invitation's links went out after ``since`` (only ``reason``'s, if given)."""
    rows = await conn.fetch(
        "SELECT issued_at FROM invitation_links WHERE invitation_id = $1 AND issued_at > $2"
        " AND ($3::text IS NULL OR reason = $3)",
        invitation_id,
        since,
        reason,
    )
    return [row["issued_at"] for row in rows]


async def resends_to_address(conn: Conn, email_lower: str, since: datetime) -> list[datetime]:
    """When new links (not first invitations) went to this address after ``since``: one
    per link, however many invitations of a group it was sent for (one email)."""
    rows = await conn.fetch(
        "SELECT min(issued_at) AS issued_at FROM invitation_links"
        " WHERE email_lower = $1 AND issued_at > $2 AND reason IS DISTINCT FROM 'invited'"
        " GROUP BY token_hash",
        email_lower,
        since,
    )
    return [row["issued_at"] for row in rows]


async def lock_address(conn: Conn, email_lower: str) -> None:
    """Serialise the sends to one address until the transaction ends, so two new links
    to different invitations of one person can't both pass the per-address cap."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('invitations:address:' || $1, 0))",
        email_lower,
    )


# --- reminders ------------------------------------------------------------------------
async def reminder_candidates(
    conn: Conn, now: datetime, days: int, after: tuple[datetime, uuid.UUID] | None, batch: int
) -> list[Row]:
    """Pending, not yet reminded, inside the reminder window, of an Active portal; in
    (expires_at, id) order after ``after``. The window's days are 24 hours, as
    domain.reminder_due counts them: ``days =>`` adds calendar days of the session's
    TimeZone, 23 or 25 hours across a DST change."""
    return await conn.fetch(
        "SELECT i.id, i.expires_at, i.group_id, i.email FROM invitations i"
        " JOIN portals p ON p.portal_id = i.portal_id AND p.status = 'active'"
        " WHERE i.status = 'pending' AND i.reminded_at IS NULL AND i.expires_at > $1"
        " AND i.expires_at <= $1 + make_interval(hours => 24 * $2)"
        " AND ($3::timestamptz IS NULL OR (i.expires_at, i.id) > ($3, $4::uuid))"
        " ORDER BY i.expires_at, i.id LIMIT $5",
        now,
        days,
        after[0] if after else None,
        after[1] if after else None,
        batch,
    )


async def claim_reminder(conn: Conn, invitation_id: uuid.UUID, now: datetime) -> Row | None:
    """Take this invitation's one reminder: exactly one transaction (of any replica) gets
    the row, the others find ``reminded_at`` set once the winner commits."""
    return await conn.fetchrow(
        _returning(
            "UPDATE invitations SET reminded_at = $2"
            " WHERE id = $1 AND status = 'pending' AND reminded_at IS NULL AND expires_at > $2"
        ),
        invitation_id,
        now,
    )


async def relink(
    conn: Conn, invitation_id: uuid.UUID, *, token_hash: str, mail_id: uuid.UUID, reason: str
) -> Row:
    """A fresh link with the same expiry (a reminder): the old hash is overwritten."""
    row = await conn.fetchrow(
        _returning(
            "UPDATE invitations SET token_hash = $2, last_mail_id = $3,"
            " send_count = send_count + 1, send_reason = $4, delivery = 'queued',"
            " delivery_error = NULL, delivery_next_attempt_at = NULL"
            " WHERE id = $1"
        ),
        invitation_id,
        token_hash,
        mail_id,
        reason,
    )
    assert row is not None
    return row


# --- Email me a new link requests -------------------------------------------------------
async def add_link_request(conn: Db, token_hash: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO link_requests (token_hash, requested_at) VALUES ($1, $2)"
        " ON CONFLICT (token_hash) DO NOTHING",
        token_hash,
        now,
    )


async def take_link_request(conn: Conn) -> Row | None:
    """The oldest waiting request, removed in the caller's transaction (so it comes back
    if that transaction fails); one that another worker holds is skipped."""
    return await conn.fetchrow(
        "DELETE FROM link_requests WHERE token_hash = ("
        " SELECT token_hash FROM link_requests ORDER BY requested_at"
        " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING token_hash, requested_at"
    )


async def drop_stale_link_requests(conn: Db, before: datetime) -> int:
    """Requests nobody could serve for long (a bug, a database away): dropped, so one can
    never hold the queue; the person may ask again."""
    result = await conn.execute("DELETE FROM link_requests WHERE requested_at < $1", before)
    return int(result.split()[-1])


# --- groups: several portals, one invitation ---------------------------------------------
async def insert_group(
    conn: Conn,
    group_id: uuid.UUID,
    email_lower: str,
    portal_ids: list[uuid.UUID],
    idempotency_key: str | None,
) -> bool:
    """False when a concurrent request made a group under this key first."""
    done = await conn.fetchval(
        "INSERT INTO invitation_groups (id, email_lower, portal_ids, idempotency_key)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
        group_id,
        email_lower,
        portal_ids,
        idempotency_key,
    )
    return bool(done)


async def find_group_by_key(conn: Db, key: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT id, email_lower, portal_ids FROM invitation_groups WHERE idempotency_key = $1",
        key,
    )


async def single_key_taken(conn: Db, key: str) -> bool:
    """Whether this key names an invitation made on its own (not a group)."""
    return bool(await conn.fetchval("SELECT true FROM invitations WHERE idempotency_key = $1", key))


async def group_key_taken(conn: Db, key: str) -> bool:
    """Whether this key names a group (several portals, one invitation)."""
    return bool(
        await conn.fetchval("SELECT true FROM invitation_groups WHERE idempotency_key = $1", key)
    )


async def group_members(conn: Db, group_id: uuid.UUID) -> list[Row]:
    """The group's invitations, in the order their portals were asked for."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.group_id = $1{_GROUP_ORDER}",
        group_id,
    )


async def lock_group(conn: Conn, group_id: uuid.UUID) -> list[Row]:
    """Every invitation of the group, locked, in id order. Whatever changes several rows
    of a group (a resend of its link, its reminder, an acceptance) takes the group's lock
    first and its rows in one order, so two of them can't deadlock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('invitations:group:' || $1::uuid::text, 0))",
        group_id,
    )
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM invitations i {_JOIN} WHERE i.group_id = $1"
        " ORDER BY i.id FOR UPDATE OF i",
        group_id,
    )


async def pending_portal_ids(
    conn: Db, email_lower: str, portal_ids: list[uuid.UUID], *, besides: list[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of these portals this address has a pending invitation to, other than the
    invitations ``besides``."""
    rows = await conn.fetch(
        "SELECT portal_id FROM invitations WHERE email_lower = $1 AND status = 'pending'"
        " AND portal_id = ANY($2::uuid[]) AND NOT (id = ANY($3::uuid[]))",
        email_lower,
        portal_ids,
        besides,
    )
    return {row["portal_id"] for row in rows}


async def reserve_ids(
    conn: Conn, ids: list[uuid.UUID], claim: uuid.UUID, until: datetime
) -> list[Row]:
    """Spend a group's link for one request: these rows (locked and checked by the
    caller) are the ones its acceptance will accept."""
    return await conn.fetch(
        _returning(
            "UPDATE invitations SET status = 'accepting', accept_claim = $2,"
            " accept_claim_until = $3, accept_reopenable = (status = 'pending')"
            " WHERE id = ANY($1::uuid[])"
        )
        + _GROUP_ORDER,
        ids,
        claim,
        until,
    )


async def set_group_delivery(
    conn: Conn, group_id: uuid.UUID, mail_id: uuid.UUID, delivery: str, error: str | None
) -> bool:
    """A group's email went (or failed): each of its rows that this mail is the latest of."""
    result = await conn.execute(
        "UPDATE invitations SET delivery = $3, delivery_error = $4, delivery_next_attempt_at = NULL"
        " WHERE id IN (SELECT id FROM invitations"
        " WHERE group_id = $1 AND last_mail_id = $2 ORDER BY id FOR UPDATE)",
        group_id,
        mail_id,
        delivery,
        error,
    )
    return result != "UPDATE 0"


async def set_group_delivery_retrying(
    conn: Conn, group_id: uuid.UUID, mail_id: uuid.UUID, next_attempt_at: datetime, reason: str
) -> bool:
    result = await conn.execute(
        "UPDATE invitations SET delivery = 'retrying', delivery_error = $4,"
        " delivery_next_attempt_at = $3 WHERE id IN (SELECT id FROM invitations"
        " WHERE group_id = $1 AND last_mail_id = $2 AND delivery IN ('queued', 'retrying')"
        " AND (delivery_next_attempt_at IS NULL OR delivery_next_attempt_at < $3)"
        " ORDER BY id FOR UPDATE)",
        group_id,
        mail_id,
        next_attempt_at,
        reason,
    )
    return result != "UPDATE 0"


async def claim_reminders(conn: Conn, ids: list[uuid.UUID], now: datetime) -> list[Row]:
    """Take the one reminder of each of these rows of a group (locked by the caller) that
    still wants it."""
    return await conn.fetch(
        _returning(
            "UPDATE invitations SET reminded_at = $2 WHERE id = ANY($1::uuid[])"
            " AND status = 'pending' AND reminded_at IS NULL AND expires_at > $2"
        )
        + _GROUP_ORDER,
        ids,
        now,
    )


async def clear_closed_messages(db: Db, closed_before: datetime) -> int:
    """Clear the Personal Message of invitations accepted or revoked before
    ``closed_before``: no Resend can send it again."""
    return await clear_in_batches(
        db,
        "invitations",
        "personal_message = NULL",
        "personal_message IS NOT NULL AND status IN ('accepted', 'revoked')"
        " AND coalesce(accepted_at, revoked_at) < $1",
        closed_before,
    )


# --- erasure ----------------------------------------------------------------------------
async def addresses_of_user(conn: Conn, user_id: uuid.UUID, erased: str) -> list[str]:
    """The addresses whose invitations made or reached this account (an accepted one names
    the user), but ``erased``, the one an earlier erasure left."""
    rows = await conn.fetch(
        "SELECT DISTINCT email_lower FROM invitations"
        " WHERE accepted_user_id = $1 AND email_lower <> $2",
        user_id,
        erased,
    )
    return sorted(r["email_lower"] for r in rows)


async def invitations_to(conn: Conn, addresses: list[str], before: datetime) -> list[uuid.UUID]:
    """The invitations to these addresses made before ``before`` (the erasure): one made
    since is a new person's, whom a late erasure must not touch. Locked, so a Resend or an
    accept waits for the erasure."""
    rows = await conn.fetch(
        "SELECT id FROM invitations WHERE email_lower = ANY($1::text[]) AND created_at <= $2"
        " ORDER BY id FOR UPDATE",
        addresses,
        before,
    )
    return [r["id"] for r in rows]


async def revoke_open(conn: Conn, ids: list[uuid.UUID], now: datetime) -> list[Row]:
    """Revoke those of these invitations still pending or expired, or being accepted (their
    links die; an acceptance under way can't finish, so none is handed back later as a
    pending invitation to the erased address)."""
    rows = await conn.fetch(
        _returning(
            "UPDATE invitations SET status = 'revoked', revoked_at = $2, accept_claim = NULL,"
            " accept_claim_until = NULL WHERE id = ANY($1::uuid[])"
            " AND status IN ('pending', 'expired', 'accepting')"
        ),
        ids,
        now,
    )
    return list(rows)


async def anonymise(conn: Conn, ids: list[uuid.UUID], erased: str) -> int:
    """Put ``erased`` where these invitations, their links, groups and batch keys had the
    address, and drop what else names or speaks to the person: their name, the Personal
    Message and the last delivery error (an SMTP answer often quotes the address). The
    rows stay: the Invitations screen's history."""
    status = await conn.execute(
        "UPDATE invitations SET email = $2, email_lower = $2, invitee_name = NULL,"
        " personal_message = NULL, delivery_error = NULL WHERE id = ANY($1::uuid[])",
        ids,
        erased,
    )
    await conn.execute(
        "UPDATE invitation_links SET email_lower = $2 WHERE invitation_id = ANY($1::uuid[])",
        ids,
        erased,
    )
    await conn.execute(
        "UPDATE batch_keys SET email_lower = $2 WHERE invitation_id = ANY($1::uuid[])",
        ids,
        erased,
    )
    await conn.execute(
        "UPDATE invitation_groups SET email_lower = $2 WHERE id IN"
        " (SELECT group_id FROM invitations WHERE id = ANY($1::uuid[]))",
        ids,
        erased,
    )
    return int(status.rsplit(" ", 1)[-1])


async def forget_sender(conn: Conn, addresses: list[str], before: datetime) -> int:
    """Where the erased person invited others (a staff member), the invitations made
    before the erasure no longer name them as the sender."""
    status = await conn.execute(
        "UPDATE invitations SET invited_by = NULL"
        " WHERE lower(invited_by) = ANY($1::text[]) AND created_at <= $2",
        addresses,
        before,
    )
    return int(status.rsplit(" ", 1)[-1])
