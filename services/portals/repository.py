"""SQL against the ``portals`` schema.

Users are referenced by id only: portals does not check them against identity. The gateway
validates that a user exists before it calls us, and an event (invitation.accepted) names
a user identity has just created, so a user may be known here before or without any call
to identity. A disabled user is removed through ``identity.user.disabled``, and what
portals heard of each account (disabled, enabled, erased) is kept in ``accounts``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, cast

import asyncpg

from libs.common.db import Conn, from_row, xact_lock

from .domain import Account, Portal, Role, Status

_PORTAL_COLUMNS = """
    p.id, p.title, p.slug, p.content, p.content_html, p.status, p.revision,
    p.created_at, p.updated_at,
    (SELECT a.user_id FROM access a WHERE a.portal_id = p.id AND a.role = 'client')
        AS client_id,
    ARRAY(SELECT a.user_id FROM access a WHERE a.portal_id = p.id AND a.role = 'sub_client'
          ORDER BY a.granted_at, a.user_id) AS sub_client_ids
"""


def _portal(row: asyncpg.Record) -> Portal:
    return from_row(Portal, row, sub_client_ids=tuple(row["sub_client_ids"]))


# --- portals --------------------------------------------------------------------------
async def get(conn: Conn, portal_id: uuid.UUID) -> Portal | None:
    row = await conn.fetchrow(f"SELECT {_PORTAL_COLUMNS} FROM portals p WHERE p.id = $1", portal_id)
    return _portal(row) if row else None


async def get_by_slug(conn: Conn, slug: str) -> Portal | None:
    row = await conn.fetchrow(f"SELECT {_PORTAL_COLUMNS} FROM portals p WHERE p.slug = $1", slug)
    return _portal(row) if row else None


async def lock(conn: Conn, portal_id: uuid.UUID) -> bool:
    """Lock the portal row until the transaction ends: access changes to one portal run
    one at a time (FK checks from other portals' inserts are not blocked)."""
    found = await conn.fetchval(
        "SELECT true FROM portals WHERE id = $1 FOR NO KEY UPDATE", portal_id
    )
    return bool(found)


async def taken_slugs(conn: Conn, candidates: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT slug FROM portals WHERE slug = ANY($1::text[])", candidates)
    return {r["slug"] for r in rows}


async def insert(
    conn: Conn,
    *,
    portal_id: uuid.UUID,
    title: str,
    slug: str,
    content: str,
    content_html: str,
    rendered_with: str,
    status: Status,
) -> None:
    """Raises asyncpg.UniqueViolationError when the slug is taken."""
    await conn.execute(
        "INSERT INTO portals"
        " (id, title, slug, content, content_html, rendered_with, rendered_from, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, md5($4), $7)",
        portal_id,
        title,
        slug,
        content,
        content_html,
        rendered_with,
        status,
    )


async def update(conn: Conn, portal_id: uuid.UUID, changes: dict[str, Any]) -> None:
    """Apply the given columns and bump the revision. Raises UniqueViolationError on slug."""
    allowed = {"title", "slug", "content", "content_html", "rendered_with", "status"}
    assert changes and set(changes) <= allowed
    names = sorted(changes)
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    if "rendered_with" in changes:  # rendered from the content written with it
        sets += f", rendered_from = md5(${names.index('content') + 2}::text)"
    await conn.execute(
        f"UPDATE portals SET {sets}, revision = revision + 1, updated_at = now() WHERE id = $1",
        portal_id,
        *(changes[name] for name in names),
    )


async def rendered_otherwise(
    conn: Conn, renderer: str, after: uuid.UUID, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` portals after ``after`` (by id) whose page another renderer wrote,
    or was rendered from other content (a previous release's save during a rollout leaves
    ``rendered_with`` as it was): id, revision, content and content_html."""
    return await conn.fetch(
        "SELECT id, revision, content, content_html FROM portals"
        " WHERE (rendered_with <> $1 OR rendered_from IS DISTINCT FROM md5(content))"
        " AND id > $2 ORDER BY id LIMIT $3",
        renderer,
        after,
        limit,
    )


async def store_rendering(
    conn: Conn, portal_id: uuid.UUID, revision: int, content_html: str, renderer: str
) -> bool:
    """A page rendered again, stored unless the portal was saved since ``revision`` was
    read (that save rendered it itself). Neither the revision nor updated_at moves: the
    portal is as its editor left it."""
    done = await conn.execute(
        "UPDATE portals SET content_html = $3, rendered_with = $4, rendered_from = md5(content)"
        " WHERE id = $1 AND revision = $2",
        portal_id,
        revision,
        content_html,
        renderer,
    )
    return done == "UPDATE 1"


async def page(
    conn: Conn,
    *,
    status: Status | None,
    q: str | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[Portal]:
    """Newest first; fetches ``limit`` rows after the cursor position."""
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        args.append(status)
        where.append(f"p.status = ${len(args)}")
    if q:
        args.append("%" + _escape_like(q) + "%")
        where.append(f"p.title ILIKE ${len(args)}")
    if after is not None:
        args.extend(after)
        where.append(f"(p.created_at, p.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = await conn.fetch(
        f"SELECT {_PORTAL_COLUMNS} FROM portals p {clause}"
        f" ORDER BY p.created_at DESC, p.id DESC LIMIT ${len(args)}",
        *args,
    )
    return [_portal(r) for r in rows]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- access ---------------------------------------------------------------------------
async def role_of(conn: Conn, portal_id: uuid.UUID, user_id: uuid.UUID) -> Role | None:
    role = await conn.fetchval(
        "SELECT role FROM access WHERE portal_id = $1 AND user_id = $2", portal_id, user_id
    )
    return cast(Role | None, role)


async def client_of(conn: Conn, portal_id: uuid.UUID) -> uuid.UUID | None:
    value = await conn.fetchval(
        "SELECT user_id FROM access WHERE portal_id = $1 AND role = 'client'", portal_id
    )
    return cast(uuid.UUID | None, value)


async def sub_clients_of(conn: Conn, portal_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT user_id FROM access WHERE portal_id = $1 AND role = 'sub_client'", portal_id
    )
    return [r["user_id"] for r in rows]


async def put_access(
    conn: Conn, portal_id: uuid.UUID, user_id: uuid.UUID, role: Role, grant_key: str | None
) -> None:
    """Insert or change a user's role; the partial unique index refuses a second client."""
    await conn.execute(
        "INSERT INTO access (portal_id, user_id, role, grant_key) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (portal_id, user_id) DO UPDATE SET role = EXCLUDED.role",
        portal_id,
        user_id,
        role,
        grant_key,
    )


async def delete_access(
    conn: Conn, portal_id: uuid.UUID, user_ids: list[uuid.UUID]
) -> list[tuple[uuid.UUID, Role]]:
    rows = await conn.fetch(
        "DELETE FROM access WHERE portal_id = $1 AND user_id = ANY($2::uuid[])"
        " RETURNING user_id, role",
        portal_id,
        user_ids,
    )
    return [(r["user_id"], r["role"]) for r in rows]


async def delete_user_access(
    conn: Conn, user_id: uuid.UUID, granted_before: datetime | None = None
) -> list[tuple[uuid.UUID, Role]]:
    """Every access of the user, or only those granted before ``granted_before``."""
    rows = await conn.fetch(
        "DELETE FROM access WHERE user_id = $1 AND ($2::timestamptz IS NULL OR granted_at < $2)"
        " RETURNING portal_id, role",
        user_id,
        granted_before,
    )
    return [(r["portal_id"], r["role"]) for r in rows]


# --- accounts -------------------------------------------------------------------------
async def lock_account(conn: Conn, user_id: uuid.UUID) -> None:
    """Until the transaction ends: a grant and the news of a Disable about one account take
    turns, so a grant can't read the account open and write its access after the Disable
    took the account's access away."""
    await xact_lock(conn, f"portals:account:{user_id}")


async def account(conn: Conn, user_id: uuid.UUID) -> Account | None:
    row = await conn.fetchrow(
        "SELECT disabled_at, enabled_at, erased_at FROM accounts WHERE user_id = $1", user_id
    )
    return from_row(Account, row) if row else None


AccountNews = Literal["disabled", "enabled", "erased"]
_ACCOUNT_NEWS: dict[AccountNews, str] = {
    "disabled": "disabled_at",
    "enabled": "enabled_at",
    "erased": "erased_at",
}


async def note_account(conn: Conn, user_id: uuid.UUID, news: AccountNews, at: datetime) -> Account:
    """Keep the latest time of each kind of news (``disabled``, ``enabled``, ``erased``):
    heard out of order, the earlier one changes nothing."""
    column = _ACCOUNT_NEWS[news]
    row = await conn.fetchrow(
        f"INSERT INTO accounts (user_id, {column}) VALUES ($1, $2)"
        f" ON CONFLICT (user_id) DO UPDATE SET {column} ="
        f" GREATEST(accounts.{column}, EXCLUDED.{column})"
        " RETURNING disabled_at, enabled_at, erased_at",
        user_id,
        at,
    )
    return from_row(Account, cast(asyncpg.Record, row))


async def applied_grant(conn: Conn, grant_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT portal_id, user_id, role FROM applied_grants WHERE grant_key = $1", grant_key
    )


async def record_grant(
    conn: Conn, grant_key: str, portal_id: uuid.UUID, user_id: uuid.UUID, role: Role
) -> None:
    await conn.execute(
        "INSERT INTO applied_grants (grant_key, portal_id, user_id, role) VALUES ($1, $2, $3, $4)",
        grant_key,
        portal_id,
        user_id,
        role,
    )


async def user_portals(conn: Conn, user_id: uuid.UUID) -> list[tuple[Portal, Role]]:
    rows = await conn.fetch(
        f"SELECT {_PORTAL_COLUMNS}, x.role AS access_role FROM access x"
        " JOIN portals p ON p.id = x.portal_id WHERE x.user_id = $1 ORDER BY p.title, p.id",
        user_id,
    )
    return [(_portal(r), r["access_role"]) for r in rows]


async def users_portals(
    conn: Conn, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[Portal, Role]]]:
    rows = await conn.fetch(
        f"SELECT {_PORTAL_COLUMNS}, x.role AS access_role, x.user_id AS access_user FROM access x"
        " JOIN portals p ON p.id = x.portal_id WHERE x.user_id = ANY($1::uuid[])"
        " ORDER BY p.title, p.id",
        user_ids,
    )
    found: dict[uuid.UUID, list[tuple[Portal, Role]]] = {u: [] for u in user_ids}
    for r in rows:
        found[r["access_user"]].append((_portal(r), r["access_role"]))
    return found


async def user_portal(conn: Conn, user_id: uuid.UUID, slug: str) -> tuple[Portal, Role] | None:
    row = await conn.fetchrow(
        f"SELECT {_PORTAL_COLUMNS}, x.role AS access_role FROM access x"
        " JOIN portals p ON p.id = x.portal_id WHERE x.user_id = $1 AND p.slug = $2",
        user_id,
        slug,
    )
    return (_portal(row), row["access_role"]) if row else None
