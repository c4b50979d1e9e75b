"""PostgreSQL's text holds every character but NUL (U+0000). Input carrying one is refused
where it comes in, naming where it was, instead of failing later as a database error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUL_PROBLEM = "can't contain the NUL character (\\u0000)"
# JSON can carry NUL only escaped, so a body without this holds none: the usual case costs
# one scan of the bytes.
_ESCAPED = b"\\u0000"


def nul_path(value: Any, path: str = "") -> str | None:
    """Where the first NUL is in parsed JSON (``title``, ``invitations.3.name``), else None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key).replace("\x00", "\\u0000")
            here = f"{path}.{name}" if path else name
            if name != key:
                return here
            found = nul_path(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = nul_path(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def json_nul_path(body: bytes, parsed: Any) -> str | None:
    """``nul_path`` of a JSON document, looked for only when its bytes may hold one."""
    return nul_path(parsed) if _ESCAPED in body else None


def query_nul_path(query: Mapping[str, str]) -> str | None:
    """The name of the first query parameter whose name or value holds NUL."""
    found = next((name for name, value in query.items() if "\x00" in name + value), None)
    return None if found is None else found.replace("\x00", "\\u0000")
