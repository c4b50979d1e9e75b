"""libs/common/nul.py: where a NUL is in parsed JSON and in a query string."""

from __future__ import annotations

import orjson

from libs.common.nul import json_nul_path, nul_path, query_nul_path


def _where(document: object) -> str | None:
    body = orjson.dumps(document)
    return json_nul_path(body, orjson.loads(body))


def test_the_path_names_the_first_field_holding_nul() -> None:
    assert _where({"title": "a\x00"}) == "title"
    assert _where({"invitations": [{"email": "a@b.c"}, {"name": "x\x00y"}]}) == "invitations.1.name"
    assert _where({"data": {"ke\x00y": 1}}) == "data.ke\\u0000y"
    assert _where(["\x00"]) == "0"
    assert nul_path("\x00") == "body"


def test_text_without_nul_is_fine_even_when_it_spells_the_escape() -> None:
    assert _where({"content": "Type \\u0000 here", "n": 1, "ok": True, "none": None}) is None
    assert _where({"content": "\x01\x1f\x7f"}) is None


def test_a_query_parameter_holding_nul_is_named() -> None:
    assert query_nul_path({"q": "a\x00", "limit": "5"}) == "q"
    assert query_nul_path({"q\x00": "a"}) == "q\\u0000"
    assert query_nul_path({"q": "a"}) is None


def test_a_document_nested_as_deep_as_json_parses_is_walked_without_recursion() -> None:
    # orjson parses up to 1024 levels, past Python's recursion limit: the walk raised
    # RecursionError, which escaped the event consumer and held the message for good.
    depth = 1020
    body = b'{"data":' + b"[" * depth + b'"a\\u0000"' + b"]" * depth + b"}"
    assert json_nul_path(body, orjson.loads(body)) == "data" + ".0" * depth
    deep_key = b'{"a":' * depth + b'{"k\\u0000":1}' + b"}" * depth
    assert json_nul_path(deep_key, orjson.loads(deep_key)) == "a." * depth + "k\\u0000"
