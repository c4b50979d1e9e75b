"""A request body read as JSON as RFC 8259 defines it, and nothing looser: declared as JSON
(or not declared), UTF-8, each key once in an object, and validated strictly, so a value
of the wrong type is refused rather than guessed at ("yes" is not true, 7.0 is not 7)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import BeforeValidator

from .errors import InvalidInput, Unreadable, UnsupportedMediaType

NOT_JSON_TYPE = "The request body must be JSON, sent with Content-Type: application/json."
NOT_UTF8 = "The request body must be JSON in UTF-8."
TOO_DEEP = "The request body must be JSON: recursion limit exceeded."
_BOM = b"\xef\xbb\xbf"
# A body aiohttp's client (and others) label when nothing else was said: no claim either way.
_UNDECLARED = "application/octet-stream"


def check_media_type(headers: Mapping[str, str], content_type: str, charset: str | None) -> None:
    """415 for a body declared as another format (a form, text, XML, CSV) or JSON in a
    charset other than UTF-8 (RFC 8259 8.1): read as JSON it would be a guess. No
    Content-Type, ``application/json`` and the ``+json`` types (RFC 6839) are read."""
    declared = "Content-Type" in headers and content_type != _UNDECLARED
    if declared and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(NOT_JSON_TYPE)
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaType(NOT_UTF8)


def parse_json(body: bytes) -> tuple[bytes, Any]:
    """The body (without a UTF-8 byte order mark, which RFC 8259 lets a reader ignore) and
    its value; 400 ``invalid_json`` saying why it can't be read. A key given twice is
    :func:`refuse_repeated_keys`' to find (a second, slower reading: not for a body
    another ClientPress service wrote from a model, where there can be none)."""
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if not body.strip():
        raise Unreadable("The request body is empty; it must be JSON.")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body:
            raise Unreadable(NOT_UTF8 + " It looks like UTF-16.") from None
        try:
            body.decode()
        except UnicodeDecodeError:
            raise Unreadable(NOT_UTF8) from None
        # orjson's reason and where: "unexpected character ...: line 1 column 9 (char 8)".
        raise Unreadable(f"The request body must be JSON: {exc}.") from None
    return body, value


def refuse_repeated_keys(body: bytes) -> None:
    """A key given twice in one object: readers disagree on which value counts (the last
    here, the first elsewhere, a log line may show either), so neither is taken."""
    if body.count(b'"') < 4:
        return

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                name = key if len(key) <= 80 else key[:80] + "…"
                raise InvalidInput(
                    f"{name}: given more than once in one object; send each field once.",
                    code="duplicate_field",
                )
            seen[key] = value
        return seen

    # Only after orjson read it: valid JSON, so this finds nothing else to refuse but a
    # nesting deeper than the standard library's recursion (orjson reads 1,024 levels).
    try:
        json.loads(body, object_pairs_hook=pairs)
    except RecursionError:
        raise Unreadable(TOO_DEEP) from None


def unreadable_for_pydantic(errors: Sequence[Mapping[str, Any]]) -> Unreadable | None:
    """pydantic's parser reads less than orjson (200 levels of nesting): what it can't read
    is a body it can't read, 400, not a value the model refuses."""
    for err in errors:
        if err["type"] == "json_invalid":
            reason = str(err["msg"]).removeprefix("Invalid JSON: ")
            return Unreadable(f"The request body must be JSON: {reason}.")
    return None


def _as_given(value: Any) -> Any:
    # pydantic takes false for 0 and 7.0 for 7 in a Literal of numbers, even when strict;
    # as text they fail the Literal with its own words ("Input should be 7, 14, 21 or 30").
    return repr(value) if isinstance(value, bool | float) else value


# Annotated[Literal[7, 14], EXACT]: only the JSON numbers 7 and 14.
EXACT = BeforeValidator(_as_given)
