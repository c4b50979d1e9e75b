"""Where a person's address is still written: every text, JSON, array and bytea (an
outbox body) column of every table of a schema, searched case-insensitively (the erasure
tests)."""

from __future__ import annotations

from typing import Any

# A bytea (an outbox body, a logo) as text: ASCII as it is, other bytes escaped.
_AS_TEXT = {"bytea": "encode({}, 'escape')"}


async def places_naming(conn: Any, schema: str, needle: str) -> list[str]:
    """``table.column`` for each column of ``schema`` with a row that contains ``needle``."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND data_type IN"
        " ('text', 'character varying', 'json', 'jsonb', 'ARRAY', 'bytea')",
        schema,
    )
    found = []
    for row in columns:
        table, column = row["table_name"], f'"{row["column_name"]}"'
        text = _AS_TEXT.get(row["data_type"], "{}::text").format(column)
        hit = await conn.fetchval(
            f'SELECT EXISTS (SELECT 1 FROM "{schema}"."{table}"'
            f" WHERE position(lower($1) IN lower({text})) > 0)",
            needle,
        )
        if hit:
            found.append(f"{table}.{row['column_name']}")
    return found
