import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from libs.common.actor import Actor
from libs.common.context import correlation_id_var
from libs.common.events import (
    EVENTS,
    BrandingChanged,
    Envelope,
    EventData,
    InvitationAccepted,
    InvitationCreated,
    InvitationRejected,
    MailRequested,
    MailRetrying,
    MalformedEvent,
    SettingsChanged,
    make_event,
    parse_data,
    parse_envelope,
)


def test_envelope_round_trip_keeps_contract_fields() -> None:
    data = InvitationAccepted(
        invitation_id=uuid.uuid4(),
        portal_id=uuid.uuid4(),
        email="a@example.com",
        user_id=uuid.uuid4(),
    )
    envelope = make_event("invitation.accepted", data, source="test", correlation_id="c1")
    raw = orjson.loads(envelope.to_json())
    assert set(raw) == {"id", "type", "version", "occurred_at", "source", "correlation_id", "data"}
    parsed = parse_envelope(envelope.to_json())
    assert parsed == envelope
    assert parse_data(parsed) == data


def test_wrong_model_for_type_is_refused() -> None:
    data = InvitationAccepted(
        invitation_id=uuid.uuid4(),
        portal_id=uuid.uuid4(),
        email="a@example.com",
        user_id=uuid.uuid4(),
    )
    with pytest.raises(ValueError):
        make_event("invitation.created", data, source="test")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"id": "x"}',
        orjson.dumps(
            {
                "id": str(uuid.uuid4()),
                "type": "invitation.accepted",
                "version": 1,
                "occurred_at": "2026-01-01T00:00:00Z",
                "source": "t",
                "correlation_id": "c",
                "data": {"email": 3},
            }
        ),
        orjson.dumps(
            {
                "id": str(uuid.uuid4()),
                "type": "invitation.accepted",
                "version": 99,
                "occurred_at": "2026-01-01T00:00:00Z",
                "source": "t",
                "correlation_id": "c",
                "data": {},
            }
        ),
    ],
)
def test_malformed_messages_are_recognised(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        parse_data(parse_envelope(body))


def test_every_public_event_has_no_secret_field() -> None:
    for (event_type, _), model in EVENTS.items():
        if event_type == "mail.requested":
            continue
        for field in model.model_fields:
            assert not any(s in field for s in ("token", "password", "hash", "url")), (
                event_type,
                field,
            )


ODD_TEXT = 'Zoë Ørsted 李 🎉 \u2028 \x00\x1f\x7f \\ " / é'
# What a consumer takes from another program: anything but NUL, which makes it malformed.
FOREIGN_TEXT = ODD_TEXT.replace("\x00", "")
ACTOR = Actor(type="user", id=str(uuid.uuid4()), name="Ådmin 管理 <a@example.com>")
SAMPLE_DATA: list[tuple[str, EventData]] = [
    (
        "invitation.created",
        InvitationCreated(
            invitation_id=uuid.uuid4(),
            portal_id=uuid.uuid4(),
            email="Jane.Doe+x@example.com",
            expires_at=datetime(2026, 3, 1, 12, 30, 0, 123456, tzinfo=UTC),
            invited_by=ODD_TEXT,
            sub_client=False,
            expires_in_days=14,
            locale="fr",
        ),
    ),
    (
        "invitation.rejected",
        InvitationRejected(
            reason="send_rate_limited",
            message=ODD_TEXT,
            retry_at=datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            portal_ids=[uuid.uuid4(), uuid.uuid4()],
        ),
    ),
    (
        "invitation.settings.changed",
        SettingsChanged(
            changes={"expiry_days": 30, "reminder": True, "note": ODD_TEXT, "gone": None},
            previous={"expiry_days": -(2**63), "reminder": False, "big": 2**64 - 1},
        ),
    ),
    (
        "mail.requested",
        MailRequested(
            mail_id=uuid.uuid4(),
            template="invitation",
            to="ünïcode@example.com",
            ref_type="invitation",
            ref_id=uuid.uuid4(),
            context={"link": "https://example.com/a?b=c&d=é", "name": ODD_TEXT},
        ),
    ),
    (
        "mail.retrying",
        MailRetrying(
            mail_id=uuid.uuid4(),
            template="invitation",
            ref_type="invitation",
            ref_id=uuid.uuid4(),
            attempt=3,
            next_attempt_at=datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
            reason="smtp_deferred",
            smtp_code=451,
        ),
    ),
    ("settings.branding.changed", BrandingChanged(changed=["agency_name", "logo"])),
]
# Envelopes as parse_envelope makes them from other systems' messages: any JSON as data.
FOREIGN_BODIES: list[dict[str, Any]] = [
    {
        "id": str(uuid.uuid4()),
        "type": "invitation.requested",
        "version": 1,
        "occurred_at": "2026-03-01T12:30:00.5+02:00",
        "source": "crm",
        "correlation_id": "x" * 100,
        "data": {
            "email": FOREIGN_TEXT,
            "nested": {"list": [1, -2.5, 1e-7, 1e16, 0.1, True, None, [], {}], "deep": {"a": None}},
            "float": 123456789.123,
            "int": 2**63 - 1,
        },
        "actor": {"type": "key", "id": "bootstrap", "name": FOREIGN_TEXT},
    },
    {
        "id": str(uuid.uuid4()),
        "type": "portal.created",
        "version": 1,
        "occurred_at": "2026-03-01T12:30:00",
        "source": "portals",
        "correlation_id": "c",
        "data": {},
        "actor": None,
    },
]


def _orjson_bytes(envelope: Envelope) -> bytes:
    """What Envelope.to_json wrote before pydantic-core did."""
    body = envelope.model_dump(mode="json")
    if body["actor"] is None:
        del body["actor"]
    return orjson.dumps(body)


def _sample_envelopes() -> list[Envelope]:
    made = [
        make_event(event_type, data, source="test", actor=actor)
        for event_type, data in SAMPLE_DATA
        for actor in (None, ACTOR)
    ]
    parsed = [parse_envelope(orjson.dumps(body)) for body in FOREIGN_BODIES]
    extra = Envelope.model_validate(
        {**FOREIGN_BODIES[1], "data": {"nan": float("nan"), "inf": float("-inf"), "t": (1, 2)}}
    )
    return [*made, *parsed, extra]


def test_to_json_writes_the_bytes_orjson_did() -> None:
    envelopes = _sample_envelopes()
    assert {e.actor is None for e in envelopes} == {True, False}
    for envelope in envelopes:
        assert envelope.to_json() == _orjson_bytes(envelope)
    assert b'"actor"' not in envelopes[0].to_json()
    assert b'"actor":{"type":"user"' in envelopes[1].to_json()


def test_a_made_envelope_is_what_its_json_reads_back_as() -> None:
    for envelope in _sample_envelopes()[: 2 * len(SAMPLE_DATA)]:
        parsed = Envelope.model_validate(orjson.loads(envelope.to_json()))
        for field in Envelope.model_fields:
            assert getattr(parsed, field) == getattr(envelope, field), field
        assert parsed == envelope
        assert parsed.model_dump() == envelope.model_dump()
        assert envelope.model_fields_set == set(Envelope.model_fields)
        with pytest.raises(ValidationError):
            envelope.source = "other"  # type: ignore[misc]


def test_a_correlation_id_envelopes_cant_carry_is_refused() -> None:
    data = BrandingChanged(changed=["logo"])
    envelope = make_event("settings.branding.changed", data, source="t", correlation_id="c" * 100)
    assert envelope.correlation_id == "c" * 100
    with pytest.raises(ValidationError):
        make_event("settings.branding.changed", data, source="t", correlation_id="c" * 101)
    token = correlation_id_var.set("request-1")
    try:
        assert make_event("settings.branding.changed", data, source="t").correlation_id == (
            "request-1"
        )
        empty = make_event("settings.branding.changed", data, source="t", correlation_id="")
        assert empty.correlation_id == "request-1"
    finally:
        correlation_id_var.reset(token)


def test_an_envelope_holding_nul_is_malformed_naming_where() -> None:
    body = {**FOREIGN_BODIES[0], "data": {"portal_slug": "acme\x00", "email": "a@b.c"}}
    with pytest.raises(MalformedEvent, match=r"data\.portal_slug: can't contain the NUL"):
        parse_envelope(orjson.dumps(body))


def test_an_envelope_nested_as_deep_as_json_parses_is_malformed_not_a_crash() -> None:
    # 1020 levels (orjson's limit is 1024) with a NUL at the bottom: the NUL check's
    # RecursionError escaped the consumer and held the message unacknowledged.
    depth = 1020
    nested = b"[" * depth + b'"\\u0000"' + b"]" * depth
    body = orjson.dumps({**FOREIGN_BODIES[0], "data": {"x": "y"}}).replace(b'"y"', nested)
    with pytest.raises(MalformedEvent, match="can't contain the NUL"):
        parse_envelope(body)
