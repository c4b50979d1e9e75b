"""Reading a message's properties, whoever wrote them: a value our AMQP client can't decode
never closes the connection.

pamqp decodes each delivery's properties inside aiormq's frame reader, and what it could
not decode raised there: a short string that is not UTF-8 (a ``message_id``, a header's
name), a ``timestamp`` beyond the year 9999 (a Node.js program that sends microseconds), a
header table nested some 500 deep (Python's recursion limit). aiormq then closed the
connection, with every consumer and the outbox relay on it; the broker delivered the same
message again at the head of the queue, and the connection closed again, until the quorum
queue's delivery limit dropped it half a minute later. One ``invitation.requested`` from
any integration cut the invitations service off the broker that long, and a message every
half minute for good.

``install()`` puts lenient readers in pamqp's tables (its decoders look them up there at
each call): such a short string is read with U+FFFD in place of what is not UTF-8, such a
timestamp as absent, a header table or array nested deeper than ``MAX_DEPTH`` (or holding
a value of no AMQP type) as empty. Nothing the services act on is read from headers; the
message reaches the consumer, which judges its body as any other's."""

from __future__ import annotations

import datetime
import struct
import threading
from collections.abc import Callable
from typing import Any

from pamqp import decode

# How deep header tables and arrays are read; RabbitMQ's own (x-death) go two deep.
MAX_DEPTH = 32

_LENGTH = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")
_state = threading.local()


def short_str(value: bytes) -> tuple[int, str]:
    """An AMQP short string; bytes that are not UTF-8 read as U+FFFD."""
    if not value:
        raise ValueError("Could not unpack short string value")
    length = value[0]
    return length + 1, value[1 : length + 1].decode("utf-8", errors="replace")


def timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    """An AMQP timestamp; one no ``datetime`` can hold is read as absent."""
    try:
        (seconds,) = _TIMESTAMP.unpack_from(value)
    except struct.error as err:
        raise ValueError("Could not unpack timestamp value") from err
    # pamqp's reading: a value past the year 2106 is taken for milliseconds.
    moment = seconds / 1000.0 if seconds > 0xFFFFFFFF else seconds
    try:
        return 8, datetime.datetime.fromtimestamp(moment, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return 8, None


def _nested(read: Callable[[bytes, int], Any], empty: Callable[[], Any]) -> Callable[..., Any]:
    """A reader of a table or array (a 4-byte length, then its values) that reads it as
    ``empty`` when it is nested deeper than ``MAX_DEPTH`` or holds what can't be read."""

    def bounded(value: bytes) -> tuple[int, Any]:
        try:
            (length,) = _LENGTH.unpack_from(value)
        except struct.error as err:
            raise ValueError("Could not unpack a field table or array") from err
        end = 4 + length
        if end > len(value):
            raise ValueError("Field table or array length exceeds available data")
        depth = getattr(_state, "depth", 0)
        if depth >= MAX_DEPTH:
            return end, empty()
        _state.depth = depth + 1
        try:
            return end, read(value[:end], end)
        except (ValueError, IndexError, struct.error):
            return end, empty()
        finally:
            _state.depth = depth

    return bounded


def _value(value: bytes) -> tuple[int, Any]:
    """A table's or array's value: its type's byte, then the value (these readers for
    tables, arrays and timestamps, pamqp's for the rest)."""
    read = _OWN.get(value[0:1]) or decode.TABLE_MAPPING.get(value[0:1])
    if read is None:
        raise ValueError(f"Unknown type: {value[0:1]!r}")
    consumed, result = read(value[1:])
    return consumed + 1, result


def _table_items(value: bytes, end: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    offset = 4
    while offset < end:
        consumed, key = short_str(value[offset:end])
        offset += consumed
        consumed, table[key] = _value(value[offset:end])
        offset += consumed
    return table


def _array_items(value: bytes, end: int) -> list[Any]:
    items: list[Any] = []
    offset = 4
    while offset < end:
        consumed, item = _value(value[offset:end])
        offset += consumed
        items.append(item)
    return items


field_table = _nested(_table_items, dict)
field_array = _nested(_array_items, list)
_OWN: dict[bytes, Callable[[bytes], tuple[int, Any]]] = {
    b"F": field_table,
    b"A": field_array,
    b"T": timestamp,
}


def install() -> None:
    """Use these readers for every frame this process decodes (idempotent)."""
    decode.METHODS.update(
        shortstr=short_str, timestamp=timestamp, table=field_table, array=field_array
    )
    decode.TABLE_MAPPING.update({b"T": timestamp, b"F": field_table, b"A": field_array})
