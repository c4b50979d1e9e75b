"""SQL against the ``identity`` schema. Times come from the caller (an injectable clock)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from libs.common.db import Conn, Db, from_row
from libs.common.email import email_key
from libs.common.retention import delete_in_batches

from .domain import Role, User

_USER_COLUMNS = "id, email, role, disabled, created_at, created_by_invitation, locale, time_zone"


def _user(row: asyncpg.Record | Any) -> User:
    return from_row(User, row)


# --- users -----------------------------------------------------------------------------
async def insert_user(
    conn: Conn,
    *,
    email: str,
    role: Role,
    password_hash: str,
    created_at: datetime,
    created_by_invitation: uuid.UUID | None = None,
    locale: str | None = None,
) -> User | None:
    """Insert, or None when the email (case-insensitively) is taken. Concurrent inserts of
    one email wait on the unique index; exactly one returns a row."""
    row = await conn.fetchrow(
        "INSERT INTO users"
        " (id, email, role, password_hash, created_at, created_by_invitation, locale)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        f" ON CONFLICT ((lower(email))) DO NOTHING RETURNING {_USER_COLUMNS}",
        uuid.uuid4(),
        email,
        role,
        password_hash,
        created_at,
        created_by_invitation,
        locale,
    )
    return _user(row) if row else None


async def get_user(conn: Conn, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1{lock}", user_id)
    return _user(row) if row else None


async def get_users(conn: Conn, user_ids: list[uuid.UUID]) -> list[User]:
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE id = ANY($1::uuid[])", user_ids
    )
    return [_user(row) for row in rows]


async def find_user_by_email(conn: Conn, email: str) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE lower(email) = lower($1)", email
    )
    return _user(row) if row else None


async def find_users_by_emails(conn: Conn, emails: list[str]) -> list[User]:
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE lower(email) = ANY($1::text[])",
        [email_key(e) for e in emails],
    )
    return [_user(row) for row in rows]


async def find_credentials(conn: Conn, email: str) -> tuple[User, str] | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower($1)",
        email,
    )
    return (_user(row), row["password_hash"]) if row else None


async def list_users(
    conn: Conn, *, q: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[User]:
    """Ordered by (created_at, id): a stable keyset, so pages never skip or repeat."""
    conditions: list[str] = []
    args: list[Any] = []
    if q:
        # Both sides lowered by PostgreSQL, as the index lowers an address: Python's
        # str.lower makes a word-final capital sigma U+03C2 where lower() gives U+03C3.
        args.append("%" + _escape_like(q) + "%")
        conditions.append(f"lower(email) LIKE lower(${len(args)})")
    if after is not None:
        args.extend(after)
        conditions.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users{where} ORDER BY created_at, id LIMIT ${len(args)}",
        *args,
    )
    return [_user(row) for row in rows]


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def set_password_hash(conn: Conn, user_id: uuid.UUID, password_hash: str) -> bool:
    status = await conn.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
    )
    return status.endswith(" 1")


async def replace_password_hash(conn: Conn, user_id: uuid.UUID, old: str, new: str) -> None:
    """Rehash on login, only if nobody changed the password in between."""
    await conn.execute(
        "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
        user_id,
        old,
        new,
    )


async def hold_enabled(conn: Conn, user_id: uuid.UUID) -> bool:
    """Whether the account exists and is enabled, share-locking its row until the
    transaction ends: a Disable (its UPDATE) waits for the transaction, then ends what it
    made (a session), and a transaction that comes after the Disable reads it disabled."""
    return bool(
        await conn.fetchval("SELECT NOT disabled FROM users WHERE id = $1 FOR SHARE", user_id)
    )


async def disable_user(conn: Conn, user_id: uuid.UUID) -> User | None:
    """None when the user is missing or already disabled (so events go out once)."""
    row = await conn.fetchrow(
        "UPDATE users SET disabled = true WHERE id = $1 AND NOT disabled"
        f" RETURNING {_USER_COLUMNS}",
        user_id,
    )
    return _user(row) if row else None


async def enable_user(conn: Conn, user_id: uuid.UUID) -> User | None:
    """None when the user is missing or not disabled (so events go out once)."""
    row = await conn.fetchrow(
        f"UPDATE users SET disabled = false WHERE id = $1 AND disabled RETURNING {_USER_COLUMNS}",
        user_id,
    )
    return _user(row) if row else None


async def delete_user(conn: Conn, user_id: uuid.UUID) -> User | None:
    """None when the user is missing (erased already). Their sessions and reset links go
    with the row (ON DELETE CASCADE)."""
    row = await conn.fetchrow(f"DELETE FROM users WHERE id = $1 RETURNING {_USER_COLUMNS}", user_id)
    return _user(row) if row else None


async def set_role(conn: Conn, user_id: uuid.UUID, role: Role) -> User | None:
    """None when the user is missing or already has the role."""
    row = await conn.fetchrow(
        f"UPDATE users SET role = $2 WHERE id = $1 AND role <> $2 RETURNING {_USER_COLUMNS}",
        user_id,
        role,
    )
    return _user(row) if row else None


async def set_preferences(
    conn: Conn, user_id: uuid.UUID, locale: str | None, time_zone: str | None
) -> User | None:
    """None when the user is missing."""
    row = await conn.fetchrow(
        f"UPDATE users SET locale = $2, time_zone = $3 WHERE id = $1 RETURNING {_USER_COLUMNS}",
        user_id,
        locale,
        time_zone,
    )
    return _user(row) if row else None


async def lock_active_administrators(conn: Conn) -> list[uuid.UUID]:
    """The active administrators, locked in one order (so two demotions can't both see the
    other one still there)."""
    rows = await conn.fetch(
        "SELECT id FROM users WHERE role = 'administrator' AND NOT disabled ORDER BY id FOR UPDATE"
    )
    return [row["id"] for row in rows]


async def administrator_exists(conn: Conn) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'administrator')")
    )


# --- sessions --------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionRow:
    id: uuid.UUID
    user_id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


async def insert_session(
    conn: Conn,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    created_at: datetime,
    expires_at: datetime,
) -> SessionRow:
    session_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $4, $5)",
        session_id,
        token_hash,
        user_id,
        created_at,
        expires_at,
    )
    return SessionRow(session_id, user_id, created_at, created_at, expires_at)


async def find_session(conn: Conn, token_hash: str) -> tuple[SessionRow, User] | None:
    """A session that is not revoked, with its user; expiry is judged by the caller."""
    row = await conn.fetchrow(
        "SELECT s.id AS session_id, s.created_at AS session_created_at, s.last_seen_at,"
        " s.expires_at, u.id, u.email, u.role, u.disabled, u.created_at,"
        " u.created_by_invitation, u.locale, u.time_zone"
        " FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.token_hash = $1 AND s.revoked_at IS NULL",
        token_hash,
    )
    if row is None:
        return None
    session = SessionRow(
        row["session_id"],
        row["id"],
        row["session_created_at"],
        row["last_seen_at"],
        row["expires_at"],
    )
    return session, _user(row)


async def touch_session(conn: Conn, session_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        "UPDATE sessions SET last_seen_at = $2"
        " WHERE id = $1 AND revoked_at IS NULL AND last_seen_at < $2",
        session_id,
        now,
    )


async def revoke_session(
    conn: Conn, token_hash: str, now: datetime
) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(user id, session id) when this call revoked it; None when unknown or already
    revoked."""
    row = await conn.fetchrow(
        "UPDATE sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL"
        " RETURNING user_id, id",
        token_hash,
        now,
    )
    return (row["user_id"], row["id"]) if row is not None else None


async def revoke_user_sessions(
    conn: Conn, user_id: uuid.UUID, now: datetime, *, keep_token_hash: str | None = None
) -> int:
    status = await conn.execute(
        "UPDATE sessions SET revoked_at = $2"
        " WHERE user_id = $1 AND revoked_at IS NULL"
        " AND ($3::text IS NULL OR token_hash <> $3)",
        user_id,
        now,
        keep_token_hash,
    )
    return int(status.rsplit(" ", 1)[-1])


async def prune_sessions(db: Db, ended_before: datetime, idle: timedelta) -> int:
    """Delete the sessions that ended (logged out, past their limit, or idle too long)
    before ``ended_before``: nothing reads a session once it has ended."""
    return await delete_in_batches(
        db,
        "sessions",
        "revoked_at < $1 OR expires_at < $1 OR last_seen_at < $2",
        ended_before,
        ended_before - idle,
    )


# --- login settings ----------------------------------------------------------------------
async def get_login_redirect(conn: Conn, *, for_update: bool = False) -> bool:
    lock = " FOR UPDATE" if for_update else ""
    return bool(await conn.fetchval("SELECT login_redirect FROM login_settings" + lock))


async def set_login_redirect(conn: Conn, value: bool) -> bool:
    return bool(
        await conn.fetchval(
            "UPDATE login_settings SET login_redirect = $1, updated_at = now()"
            " RETURNING login_redirect",
            value,
        )
    )


# --- password resets ---------------------------------------------------------------------
@dataclass(frozen=True)
class ResetRow:
    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    disabled: bool
    expires_at: datetime
    used_at: datetime | None


async def insert_reset(
    conn: Conn,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    created_at: datetime,
    expires_at: datetime,
) -> uuid.UUID:
    reset_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO password_resets (id, token_hash, user_id, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        reset_id,
        token_hash,
        user_id,
        created_at,
        expires_at,
    )
    return reset_id


async def recent_resets(conn: Conn, user_id: uuid.UUID, since: datetime) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM password_resets WHERE user_id = $1 AND created_at > $2",
        user_id,
        since,
    )
    return int(value or 0)


async def find_reset(conn: Conn, token_hash: str) -> ResetRow | None:
    row = await conn.fetchrow(
        "SELECT r.id, r.user_id, u.email, u.disabled, r.expires_at, r.used_at"
        " FROM password_resets r JOIN users u ON u.id = r.user_id WHERE r.token_hash = $1",
        token_hash,
    )
    if row is None:
        return None
    return ResetRow(
        row["id"], row["user_id"], row["email"], row["disabled"], row["expires_at"], row["used_at"]
    )


async def use_reset(conn: Conn, token_hash: str, now: datetime) -> uuid.UUID | None:
    """Mark the reset used; exactly one concurrent caller gets the user id back."""
    value = await conn.fetchval(
        "UPDATE password_resets SET used_at = $2"
        " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2"
        " RETURNING user_id",
        token_hash,
        now,
    )
    return value if isinstance(value, uuid.UUID) else None


async def close_user_resets(conn: Conn, user_id: uuid.UUID, now: datetime) -> None:
    """A password set through one link kills the user's other outstanding links."""
    await conn.execute(
        "UPDATE password_resets SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL",
        user_id,
        now,
    )


async def prune_resets(db: Db, ended_before: datetime) -> int:
    """Delete the reset links used or expired before ``ended_before`` (the hourly cap
    counts only the last hour's)."""
    return await delete_in_batches(
        db, "password_resets", "used_at < $1 OR expires_at < $1", ended_before
    )


# --- integration keys -------------------------------------------------------------------
@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: list[str]
    prefix: str
    created_by: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None


_KEY_COLUMNS = "id, name, scopes, prefix, created_by, created_at, last_used_at"


def _key(row: asyncpg.Record | Any) -> ApiKey:
    return from_row(ApiKey, row, scopes=list(row["scopes"]))


async def insert_api_key(
    conn: Conn,
    *,
    name: str,
    scopes: list[str],
    key_hash: str,
    prefix: str,
    created_by: uuid.UUID | None,
    created_at: datetime,
    request_id: str | None = None,
) -> ApiKey | None:
    """The new key, or None when ``request_id`` already made one."""
    row = await conn.fetchrow(
        "INSERT INTO api_keys"
        " (id, name, scopes, key_hash, prefix, created_by, created_at, request_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING"
        f" RETURNING {_KEY_COLUMNS}",
        uuid.uuid4(),
        name,
        scopes,
        key_hash,
        prefix,
        created_by,
        created_at,
        request_id,
    )
    return _key(row) if row is not None else None


async def live_api_keys(conn: Conn) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
        " ORDER BY created_at DESC, id DESC"
    )
    return [_key(row) for row in rows]


async def revoke_api_key(conn: Conn, key_id: uuid.UUID, now: datetime) -> ApiKey | None:
    """The key this call revoked; None when it is unknown or was revoked already."""
    row = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
        f" RETURNING {_KEY_COLUMNS}",
        key_id,
        now,
    )
    return _key(row) if row else None


async def find_live_api_key(conn: Conn, key_hash: str) -> ApiKey | None:
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        key_hash,
    )
    return _key(row) if row else None


async def touch_api_key(conn: Conn, key_id: uuid.UUID, now: datetime, before: datetime) -> None:
    """Record a use, unless one was recorded after ``before`` (one write a minute at most)."""
    await conn.execute(
        "UPDATE api_keys SET last_used_at = $2"
        " WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        key_id,
        now,
        before,
    )
