"""PostgreSQL's text holds every character but NUL (U+0000). Input carrying one is refused
where it comes in, naming where it was, instead of failing later as a database error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUL_PROBLEM = "can't contain the NUL character (\\u0000)"
# JSON can carry NUL only escaped, so a body without this holds none: the usual case costs
# one scan of the bytes.
_ESCAPED = b"\\u0000"
# Stands on the stack for a key found holding NUL: its path is the answer.
_NUL_KEY = "\x00"


def nul_path(value: Any, path: str = "") -> str | None:
    """Where the first NUL is in parsed JSON (``title``, ``invitations.3.name``), else None.

    Walked with a stack of its own, not by recursion: orjson parses documents nested up to
    1024 deep, past Python's recursion limit, and a RecursionError here escaped the event
    consumer, which then held the message unacknowledged for its channel's life."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return here or "body"
        elif isinstance(item, Mapping):
            children: list[tuple[Any, str]] = []
            for key, child in item.items():
                name = str(key).replace("\x00", "\\u0000")
                where = f"{here}.{name}" if here else name
                if name != key:
                    # A key holding NUL is found before its value and its later siblings.
                    children.append((_NUL_KEY, where))
                    break
                children.append((child, where))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(
                (child, f"{here}.{i}" if here else str(i))
                for i, child in reversed(list(enumerate(item)))
            )
    return None


def json_nul_path(body: bytes, parsed: Any) -> str | None:
    """``nul_path`` of a JSON document, looked for only when its bytes may hold one."""
    return nul_path(parsed) if _ESCAPED in body else None


def query_nul_path(query: Mapping[str, str]) -> str | None:
    """The name of the first query parameter whose name or value holds NUL."""
    found = next((name for name, value in query.items() if "\x00" in name + value), None)
    return None if found is None else found.replace("\x00", "\\u0000")
