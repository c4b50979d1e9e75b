import uuid

import orjson
import pytest

from libs.common.events import (
    EVENTS,
    InvitationAccepted,
    MalformedEvent,
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
