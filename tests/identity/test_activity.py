"""The Activity log in identity: each recorded event becomes one entry with its actor and
object, nothing without an actor, once per event; read newest first in keyset pages,
filtered by actor, action and portal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from libs.common.activity import ACTIONS, EVENT_ACTIONS
from libs.common.actor import ACTOR_HEADER, Actor, encode_actor
from libs.common.events import EVENTS, make_event, parse_data, parse_envelope
from services.identity.consumer import HANDLERS, entry_of
from services.identity.domain import ActivityEntry
from services.identity.handlers import Deps, record_activity

Client = TestClient[Any, Any]

PORTAL = uuid.uuid4()
USER = uuid.uuid4()
INVITATION = uuid.uuid4()
KEY = uuid.uuid4()
WHEN = "2026-01-01T10:00:00Z"
INVITATION_DATA = {
    "invitation_id": INVITATION,
    "portal_id": PORTAL,
    "email": "jane@client.example",
    "expires_at": WHEN,
    "invited_by": "dana@agency.example",
}
STAFF_DATA = {
    "invitation_id": INVITATION,
    "email": "sam@agency.example",
    "role": "staff",
    "expires_at": datetime(2026, 12, 14, tzinfo=UTC),
    "invited_by": "dana@agency.example",
}
PORTAL_DATA = {
    "portal_id": PORTAL,
    "slug": "acme",
    "title": "Acme",
    "status": "active",
    "revision": 2,
}
KEY_DATA = {"key_id": KEY, "name": "CRM sync", "scopes": ["portals:read"]}
# Each recorded event type: its data, and the (object type, object id, label, portal,
# details) the entry must have. A user's label comes from the users table later.
CASES: dict[str, tuple[dict[str, Any], tuple[str, Any, str, Any, dict[str, Any]]]] = {
    "invitation.created": (
        INVITATION_DATA,
        (
            "invitation",
            str(INVITATION),
            "jane@client.example",
            PORTAL,
            {"invited_by": "dana@agency.example"},
        ),
    ),
    "invitation.resent": (
        {**INVITATION_DATA, "reason": "staff"},
        (
            "invitation",
            str(INVITATION),
            "jane@client.example",
            PORTAL,
            {"invited_by": "dana@agency.example"},
        ),
    ),
    "invitation.revoked": (
        {k: v for k, v in INVITATION_DATA.items() if k != "expires_at"},
        (
            "invitation",
            str(INVITATION),
            "jane@client.example",
            PORTAL,
            {"invited_by": "dana@agency.example"},
        ),
    ),
    "portal.created": (PORTAL_DATA, ("portal", str(PORTAL), "Acme", PORTAL, {"status": "active"})),
    "portal.updated": (PORTAL_DATA, ("portal", str(PORTAL), "Acme", PORTAL, {"status": "active"})),
    "portal.access.granted": (
        {"portal_id": PORTAL, "user_id": USER, "role": "sub_client"},
        ("user", str(USER), "", PORTAL, {"role": "sub_client"}),
    ),
    "portal.access.revoked": (
        {"portal_id": PORTAL, "user_id": USER},
        ("user", str(USER), "", PORTAL, {}),
    ),
    "identity.settings.changed": (
        {"changes": {"login_redirect": True}, "previous": {"login_redirect": False}},
        (
            "settings",
            None,
            "Access & Login",
            None,
            {"changes": {"login_redirect": True}, "previous": {"login_redirect": False}},
        ),
    ),
    "invitation.settings.changed": (
        {"changes": {"invitation_expiry_days": 21}, "previous": {"invitation_expiry_days": 14}},
        (
            "settings",
            None,
            "Access & Login",
            None,
            {"changes": {"invitation_expiry_days": 21}, "previous": {"invitation_expiry_days": 14}},
        ),
    ),
    "settings.branding.changed": (
        {"changed": ["agency_name", "accent_colour"]},
        ("settings", None, "Branding", None, {"changed": ["agency_name", "accent_colour"]}),
    ),
    "identity.user.role_changed": (
        {"user_id": USER, "role": "staff", "previous_role": "client"},
        ("user", str(USER), "", None, {"role": "staff", "previous_role": "client"}),
    ),
    "invitation.staff.created": (
        STAFF_DATA,
        (
            "staff_invitation",
            str(INVITATION),
            "sam@agency.example",
            None,
            {"role": "staff", "invited_by": "dana@agency.example"},
        ),
    ),
    "invitation.staff.resent": (
        STAFF_DATA,
        (
            "staff_invitation",
            str(INVITATION),
            "sam@agency.example",
            None,
            {"role": "staff", "invited_by": "dana@agency.example"},
        ),
    ),
    "invitation.staff.revoked": (
        {"invitation_id": INVITATION, "email": "sam@agency.example", "role": "administrator"},
        (
            "staff_invitation",
            str(INVITATION),
            "sam@agency.example",
            None,
            {"role": "administrator"},
        ),
    ),
    "identity.user.disabled": ({"user_id": USER}, ("user", str(USER), "", None, {})),
    "identity.user.erased": ({"user_id": USER}, ("user", str(USER), "", None, {})),
    "identity.user.enabled": ({"user_id": USER}, ("user", str(USER), "", None, {})),
    "identity.key.created": (
        KEY_DATA,
        ("key", str(KEY), "CRM sync", None, {"scopes": ["portals:read"]}),
    ),
    "identity.key.revoked": (
        KEY_DATA,
        ("key", str(KEY), "CRM sync", None, {"scopes": ["portals:read"]}),
    ),
}


def _event(event_type: str, actor: Actor | None) -> Any:
    data = EVENTS[(event_type, 1)].model_validate(CASES[event_type][0])
    return make_event(event_type, data, source="test", actor=actor)


def test_every_action_has_its_words_and_every_recorded_event_is_consumed() -> None:
    assert set(EVENT_ACTIONS.values()) <= set(ACTIONS)
    assert set(HANDLERS) == set(EVENT_ACTIONS) == set(CASES)


@pytest.mark.parametrize("event_type", sorted(CASES))
def test_each_change_made_by_someone_is_one_entry_with_its_actor(event_type: str) -> None:
    dana = Actor(type="user", id=str(uuid.uuid4()), name="dana@agency.example")
    envelope = _event(event_type, dana)
    entry = entry_of(envelope, envelope_data(envelope))
    assert entry is not None
    assert (entry.id, entry.occurred_at) == (envelope.id, envelope.occurred_at)
    assert entry.action == EVENT_ACTIONS[event_type]
    assert (entry.actor_type, entry.actor_id, entry.actor_name) == ("user", dana.id, dana.name)
    shape = (entry.object_type, entry.object_id, entry.object_label, entry.portal_id, entry.details)
    assert shape == CASES[event_type][1]
    # The system's own work, or an invitee's, is nobody's change: no entry.
    nobody = _event(event_type, None)
    assert entry_of(nobody, envelope_data(nobody)) is None


def envelope_data(envelope: Any) -> Any:
    return parse_data(envelope)


def _entry(
    actor: str,
    action: str,
    when: datetime,
    *,
    portal: uuid.UUID | None = None,
    user: uuid.UUID | None = None,
) -> ActivityEntry:
    return ActivityEntry(
        id=uuid.uuid4(),
        occurred_at=when,
        action=action,
        actor_type="key",
        actor_id=actor,
        actor_name=f"key {actor[:8]}",
        object_type="user" if user else "portal",
        object_id=str(user or portal),
        object_label="" if user else "A portal",
        portal_id=portal,
    )


async def _page(client: Client, **query: str) -> dict[str, Any]:
    response = await client.get("/activity", params=query)
    assert response.status == 200, await response.text()
    return dict(await response.json())


@pytest.mark.integration
async def test_the_log_pages_newest_first_and_filters_by_actor_action_and_portal(
    client: Client, pool: asyncpg.Pool, deps: Deps
) -> None:
    ann, bob = str(uuid.uuid4()), str(uuid.uuid4())
    one, two = uuid.uuid4(), uuid.uuid4()
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    entries = [
        _entry(ann, "portal.created", start, portal=one),
        _entry(ann, "portal.updated", start + timedelta(minutes=1), portal=one),
        _entry(ann, "portal.created", start + timedelta(minutes=2), portal=two),
        _entry(bob, "portal.updated", start + timedelta(minutes=3), portal=two),
        _entry(ann, "portal.updated", start + timedelta(minutes=4), portal=two),
    ]
    async with pool.acquire() as conn:
        for entry in entries:
            assert await record_activity(deps.within(conn), entry)
        # The same event delivered again adds nothing.
        assert not await record_activity(deps.within(conn), entries[0])

    mine = [e for e in entries if e.actor_id == ann]
    seen: list[str] = []
    page = await _page(client, actor=ann, limit="2")
    while True:
        seen += [item["id"] for item in page["items"]]
        assert len(page["items"]) <= 2
        if page["next_cursor"] is None:
            break
        page = await _page(client, actor=ann, limit="2", cursor=page["next_cursor"])
    assert seen == [str(e.id) for e in reversed(mine)]  # newest first, past several pages

    updated = await _page(client, actor=ann, action="portal.updated")
    assert [i["id"] for i in updated["items"]] == [str(entries[4].id), str(entries[1].id)]
    on_two = await _page(client, portal_id=str(two), limit="200")
    assert {i["id"] for i in on_two["items"]} >= {str(e.id) for e in entries[2:]}
    assert all(i["portal_id"] == str(two) for i in on_two["items"])
    by_bob = await _page(client, actor=bob)
    [item] = by_bob["items"]
    assert item["actor"] == {"type": "key", "id": bob, "name": f"key {bob[:8]}"}
    assert item["object"] == {"type": "portal", "id": str(two), "label": "A portal"}
    assert item["action"] == "portal.updated" and item["occurred_at"].startswith("2026-03-01")

    actors = (await (await client.get("/activity/actors")).json())["items"]
    assert {"id": bob, "type": "key", "name": f"key {bob[:8]}"} in actors

    response = await client.get("/activity", params={"cursor": "not-a-cursor"})
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "invalid_cursor"


@pytest.mark.integration
async def test_a_user_is_labelled_with_their_email(
    client: Client, pool: asyncpg.Pool, deps: Deps
) -> None:
    email = f"sam-{uuid.uuid4().hex[:8]}@client.example"
    made = await client.post(
        "/users", json={"email": email, "password": "a-long-password-for-sam", "role": "client"}
    )
    assert made.status == 201, await made.text()
    user_id = uuid.UUID((await made.json())["id"])
    actor = str(uuid.uuid4())
    entry = _entry(actor, "user.disabled", datetime.now(UTC), user=user_id)
    async with pool.acquire() as conn:
        await record_activity(deps.within(conn), entry)
    [item] = (await _page(client, actor=actor))["items"]
    assert item["object"] == {"type": "user", "id": str(user_id), "label": email}


async def _outbox(pool: asyncpg.Pool, *types: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = ANY($1::text[]) ORDER BY seq", list(types)
    )
    return [orjson.loads(row["body"]) for row in rows]


@pytest.mark.integration
async def test_settings_and_keys_announce_their_changes_with_who_made_them(
    client: Client, pool: asyncpg.Pool
) -> None:
    dana = Actor(type="user", id=str(uuid.uuid4()), name="dana@agency.example")
    headers = {ACTOR_HEADER: encode_actor(dana)}
    kinds = ("identity.settings.changed", "identity.key.created", "identity.key.revoked")
    before = len(await _outbox(pool, *kinds))
    current = (await (await client.get("/settings/login")).json())["login_redirect"]
    for value in (not current, not current, current):  # the second save changes nothing
        response = await client.put(
            "/settings/login", json={"login_redirect": value}, headers=headers
        )
        assert response.status == 200
    made = await client.post(
        "/api-keys", json={"name": "CRM sync", "scopes": ["portals:read"]}, headers=headers
    )
    key = await made.json()
    assert (await client.delete(f"/api-keys/{key['id']}", headers=headers)).status == 204

    events = (await _outbox(pool, *kinds))[before:]
    assert [(e["type"], e["data"]) for e in events] == [
        (
            "identity.settings.changed",
            {"changes": {"login_redirect": not current}, "previous": {"login_redirect": current}},
        ),
        (
            "identity.settings.changed",
            {"changes": {"login_redirect": current}, "previous": {"login_redirect": not current}},
        ),
        (
            "identity.key.created",
            {"key_id": key["id"], "name": "CRM sync", "scopes": ["portals:read"]},
        ),
        (
            "identity.key.revoked",
            {"key_id": key["id"], "name": "CRM sync", "scopes": ["portals:read"]},
        ),
    ]
    assert all(e["actor"] == dana.model_dump() for e in events)
    assert key["key"] not in str(events)  # never the key itself


def test_a_branding_change_naming_a_field_this_release_doesnt_know_is_still_recorded() -> None:
    """A later release's mailer may name a Branding field this release doesn't know, as this
    release's mailer names default_locale and time_zone, which a 0.1.0 identity refused as a
    malformed event and dead-lettered during the rollout. The list only says what changed:
    the entry keeps the names as they came."""
    dana = Actor(type="user", id=str(uuid.uuid4()), name="dana@agency.example")
    known = _event("settings.branding.changed", dana)
    body = orjson.loads(known.to_json())
    body["data"]["changed"] = ["agency_name", "signature"]
    envelope = parse_envelope(orjson.dumps(body))
    entry = entry_of(envelope, parse_data(envelope))
    assert entry is not None and entry.details == {"changed": ["agency_name", "signature"]}
