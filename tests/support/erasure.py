"""Where a person's address is still written: every text, JSON, array and bytea (an
outbox body) column of every table of a schema, searched case-insensitively (the erasure
tests)."""

from __future__ import annotations

import json
from typing import Any

from libs.common.email import email_key

# A bytea (an outbox body, a logo) as text: ASCII as it is, other bytes escaped, so an
# ASCII needle is found in any case.
_AS_TEXT = {"bytea": "encode({}, 'escape')"}


def _byte_forms(needle: str) -> list[bytes]:
    """The bytes a bytea would hold ``needle`` as, in the cases it is written in (as given,
    lowered, upper-cased; lowered a character at a time, as PostgreSQL's lower() does): its
    UTF-8, and the ``\\uXXXX`` escapes of JSON written ASCII-only. The escaped text above
    can't find a needle with a non-ASCII letter (its bytes come out as octal escapes)."""
    cases = {needle, needle.lower(), needle.upper(), email_key(needle)}
    forms = {text.encode() for text in cases} | {json.dumps(text)[1:-1].encode() for text in cases}
    return sorted(forms)


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
        if row["data_type"] == "bytea":
            hit = await conn.fetchval(
                f'SELECT EXISTS (SELECT 1 FROM "{schema}"."{table}"'
                f" WHERE position(lower($1) IN lower({text})) > 0"
                f" OR EXISTS (SELECT 1 FROM unnest($2::bytea[]) AS form"
                f" WHERE position(form IN {column}) > 0))",
                needle,
                _byte_forms(needle),
            )
        else:
            hit = await conn.fetchval(
                f'SELECT EXISTS (SELECT 1 FROM "{schema}"."{table}"'
                f" WHERE position(lower($1) IN lower({text})) > 0)",
                needle,
            )
        if hit:
            found.append(f"{table}.{row['column_name']}")
    return found
