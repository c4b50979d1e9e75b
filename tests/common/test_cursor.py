"""The one keyset cursor of every list (libs/common/cursor.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from libs.common.cursor import decode_cursor, encode_cursor
from libs.common.errors import InvalidInput


def test_cursor_round_trip() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = uuid.uuid4()
    assert decode_cursor(encode_cursor(when, row_id)) == (when, row_id)


@pytest.mark.parametrize(
    "cursor", ["", "!!!", "!!not-a-cursor", "bm90IGpzb24", "WzFd", "éé", "MjAyNnx4"]
)
def test_bad_cursor_is_invalid_input(cursor: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_cursor(cursor)
    assert err.value.code == "invalid_cursor"
