"""The one keyset cursor of every list (libs/common/cursor.py)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from libs.common.cursor import decode_cursor, encode_cursor
from libs.common.errors import InvalidInput


def test_cursor_round_trip() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = uuid.uuid4()
    assert decode_cursor("portals", encode_cursor("portals", when, row_id)) == (when, row_id)


def test_a_cursor_of_another_list_is_invalid() -> None:
    cursor = encode_cursor("invitations", datetime.now(UTC), uuid.uuid4())
    with pytest.raises(InvalidInput) as err:
        decode_cursor("portals", cursor)
    assert err.value.code == "invalid_cursor"


def test_a_cursor_issued_before_lists_named_theirs_still_pages() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = uuid.uuid4()
    old = base64.urlsafe_b64encode(f"{when.isoformat()}|{row_id}".encode()).decode().rstrip("=")
    assert decode_cursor("users", old) == (when, row_id)


@pytest.mark.parametrize(
    "cursor", ["", "!!!", "!!not-a-cursor", "bm90IGpzb24", "WzFd", "éé", "MjAyNnx4"]
)
def test_bad_cursor_is_invalid_input(cursor: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_cursor("portals", cursor)
    assert err.value.code == "invalid_cursor"


@pytest.mark.parametrize(
    "when",
    # Times Python reads that PostgreSQL can't be given (they leave year 1 to 9999 once
    # in UTC), and one without its offset, which no list issues.
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-01-02T03:04:05"],
)
def test_a_forged_time_no_list_issues_is_invalid(when: str) -> None:
    raw = f"portals|{when}|{uuid.uuid4()}"
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(InvalidInput) as err:
        decode_cursor("portals", cursor)
    assert err.value.code == "invalid_cursor"
