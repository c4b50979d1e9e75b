"""SQL on the ``mailer`` schema: the one branding row and its logo."""

from __future__ import annotations

from typing import Any

from libs.common.db import Conn

from .domain import Branding, Logo

# Every column but the logo's bytes, which only the logo route reads.
COLUMNS = (
    "agency_name, accent_colour, reply_to, footer_text, logo_etag, logo_type,"
    " logo_width, logo_height, default_locale, time_zone"
)


async def get(conn: Conn) -> Branding | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM branding")
    return Branding(**dict(row)) if row is not None else None


async def lock(conn: Conn, first: Branding) -> Branding:
    """The row, locked for this transaction; made from ``first`` (the variables' values)
    if nobody has saved yet. Two first saves at once: one inserts, the other waits."""
    await conn.execute(
        "INSERT INTO branding"
        " (id, agency_name, accent_colour, reply_to, footer_text, default_locale, time_zone)"
        " VALUES (true, $1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        first.agency_name,
        first.accent_colour,
        first.reply_to,
        first.footer_text,
        first.default_locale,
        first.time_zone,
    )
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM branding FOR UPDATE")
    assert row is not None
    return Branding(**dict(row))


async def save(conn: Conn, branding: Branding) -> None:
    """Write the text fields of the (locked) row; the logo is untouched."""
    await conn.execute(
        "UPDATE branding SET agency_name = $1, accent_colour = $2, reply_to = $3,"
        " footer_text = $4, default_locale = $5, time_zone = $6, updated_at = now()",
        branding.agency_name,
        branding.accent_colour,
        branding.reply_to,
        branding.footer_text,
        branding.default_locale,
        branding.time_zone,
    )


async def save_logo(conn: Conn, logo: Logo | None) -> None:
    content, kind, etag = (logo.content, logo.content_type, logo.etag) if logo else (None, "", "")
    width, height = (logo.width, logo.height) if logo else (0, 0)
    await conn.execute(
        "UPDATE branding SET logo = $1, logo_type = $2, logo_etag = $3, logo_width = $4,"
        " logo_height = $5, updated_at = now()",
        content,
        kind,
        etag,
        width,
        height,
    )


async def get_logo(conn: Conn) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT logo, logo_type, logo_etag FROM branding WHERE logo IS NOT NULL"
    )
    return dict(row) if row is not None else None
