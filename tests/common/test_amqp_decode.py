"""libs/common/amqp_decode.py: properties no client writes are read, never raised on;
what clients do write reads as pamqp reads it."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal

from pamqp import decode, encode

from libs.common import amqp_decode


def test_what_clients_write_reads_as_pamqp_reads_it() -> None:
    headers = {
        "x-death": [{"count": 2, "reason": "rejected", "time": datetime(2020, 1, 1, tzinfo=UTC)}],
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "nested": {"list": [1, 2.5, "s", True, None, Decimal("1.5")], "n": -5},
    }
    written = encode.field_table(headers)
    assert amqp_decode.field_table(written) == decode.field_table(written)
    assert amqp_decode.short_str(b"\x03abc") == decode.short_str(b"\x03abc")
    stamp = struct.pack(">Q", 1_700_000_000)
    assert amqp_decode.timestamp(stamp) == decode.timestamp(stamp)


def test_what_no_client_writes_is_read_leniently() -> None:
    assert amqp_decode.short_str(b"\x02\xff\xfe") == (3, "\ufffd\ufffd")
    # Microseconds since 1970 (pamqp takes them for milliseconds): past year 9999.
    assert amqp_decode.timestamp(struct.pack(">Q", 1_764_000_000_000_000)) == (8, None)
    inner = b""
    for _ in range(2000):
        inner = b"\x01aF" + struct.pack(">I", len(inner)) + inner
    deep = struct.pack(">I", len(inner)) + inner
    consumed, table = amqp_decode.field_table(deep)
    assert consumed == len(deep)
    for _ in range(amqp_decode.MAX_DEPTH - 1):
        table = table["a"]
    assert table == {"a": {}}
    # A value of no AMQP type ("Z"): the table it is in reads as empty.
    assert amqp_decode.field_table(struct.pack(">I", 7) + b"\x01aZ\0\0\0\0") == (11, {})
