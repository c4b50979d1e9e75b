"""The keyset cursor of a list ordered by (created_at, id): opaque to the caller, a
URL-safe encoding of the list's name and the last row's two keys. The name keeps a cursor
to its own list: another list's would page from a row that isn't there, a page that
looks right and is not."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from pydantic import StringConstraints

from .errors import InvalidInput

T = TypeVar("T")

# A list's ``cursor`` query value, as every service reads it. A list issues about 110
# characters; the bound is the one the lists have always documented. Within it, anything
# no list issued is refused by ``decode_cursor`` as ``invalid_cursor``.
MAX_CURSOR_LENGTH = 500
Cursor = Annotated[str, StringConstraints(max_length=MAX_CURSOR_LENGTH)]


def page_of(fetched: list[T], limit: int) -> tuple[list[T], bool]:
    """A page asked of the database as ``limit + 1`` rows: its first ``limit``, and whether
    more follow (the extra row)."""
    return fetched[:limit], len(fetched) > limit


def encode_cursor(listing: str, created_at: datetime, row_id: uuid.UUID) -> str:
    """``listing``: the list's name (``portals``, ``invitations``), checked on the way back."""
    raw = f"{listing}|{created_at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(listing: str, cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = raw.split("|")
        if len(parts) == 3:
            named, created_at, row_id = parts
            if named != listing:
                raise ValueError(named)
        else:
            # A cursor issued before lists named theirs: a client paging through the
            # upgrade finishes its walk.
            created_at, row_id = parts
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            raise ValueError(created_at)  # every list issues its time with its offset
        # The database takes it in UTC: a time Python reads but can't move there (within a
        # day of year 1 or of year 9999) is no cursor a list issued (OverflowError).
        return when.astimezone(UTC), uuid.UUID(row_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "The cursor is not valid; start from the first page.", code="invalid_cursor"
        ) from None
