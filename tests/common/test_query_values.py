"""Query values as strict as a JSON body's (libs/common/web.py ``parse_query``), on every
service: one spelling of an integer, a boolean and a UUID, anything else 422 naming the
parameter."""

from __future__ import annotations

import uuid

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import BaseModel

from libs.common.errors import InvalidInput
from libs.common.web import parse_query
from services.identity.api import ActivityQuery
from services.invitations.api import CountsQuery, ListQuery

ID = uuid.UUID("0b5cbd5e-8f3a-4c1e-9d2a-7f6e5d4c3b2a")


class Preview(BaseModel):
    dry_run: bool = False
    portal_id: uuid.UUID | None = None


def _parse(model: type[BaseModel], query: str) -> BaseModel:
    return parse_query(make_mocked_request("GET", "/?" + query), model)


@pytest.mark.parametrize("model", [ActivityQuery, ListQuery, CountsQuery, Preview])
@pytest.mark.parametrize(
    "value",
    [
        "{" + str(ID) + "}",
        ID.hex,
        "urn:uuid:" + str(ID),
        str(ID)[:-1],
        "%20" + str(ID),
        str(ID).replace("-", "_"),
    ],
)
def test_a_uuid_is_its_canonical_spelling_alone(model: type[BaseModel], value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _parse(model, f"portal_id={value}")
    assert refused.value.message.startswith("portal_id: Input should be a UUID: 32 hexadecimal")


@pytest.mark.parametrize("model", [ActivityQuery, ListQuery, CountsQuery, Preview])
def test_a_canonical_uuid_in_either_case_is_read(model: type[BaseModel]) -> None:
    for value in (str(ID), str(ID).upper()):
        assert getattr(_parse(model, f"portal_id={value}"), "portal_id") == ID


@pytest.mark.parametrize("value", ["1", "0", "yes", "no", "on", "off", "True", "FALSE", "y", ""])
def test_a_boolean_is_true_or_false_alone(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _parse(Preview, f"dry_run={value}")
    assert refused.value.message == "dry_run: Input should be true or false"


def test_true_and_false_are_read() -> None:
    assert getattr(_parse(Preview, "dry_run=true"), "dry_run") is True
    assert getattr(_parse(Preview, "dry_run=false"), "dry_run") is False
    assert getattr(_parse(Preview, ""), "dry_run") is False
