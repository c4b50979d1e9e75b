"""The actor of a change (libs/common/actor.py): sent by the gateway, believed only from
the gateway, stamped on the events written while handling the request."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from libs.common.actor import (
    ACTOR_HEADER,
    Actor,
    current_actor,
    decode_actor,
    encode_actor,
    set_actor,
)
from libs.common.events import UserDisabled, make_event, parse_envelope
from libs.common.http import ServiceClient
from libs.common.service_auth import (
    ServiceKeys,
    TokenSigner,
    encode_private,
    generate,
    parse_public_table,
    public_table_text,
)
from libs.common.settings import CommonSettings
from libs.common.web import base_app, json_response, require_service_proof

KEYS = generate()
TABLE = public_table_text(KEYS)
DANA = Actor(type="user", id=str(uuid.uuid4()), name="dana@agency.example")
CRM = Actor(type="key", id=str(uuid.uuid4()), name="CRM sync")


def signer(service: str) -> TokenSigner:
    return TokenSigner(ServiceKeys(service, KEYS[service], parse_public_table(TABLE)))


def test_the_header_carries_any_name_and_refuses_what_it_cannot_read() -> None:
    odd = Actor(type="user", id="u-1", name="zoë@exämple.com")
    assert decode_actor(encode_actor(odd)) == odd
    assert decode_actor(encode_actor(CRM)) == CRM
    for bad in (None, "", "%%%", "bm90IGpzb24", encode_actor(CRM) + "x" * 3000):
        assert decode_actor(bad) is None
    wrong_type = orjson.dumps({"type": "system", "id": "x", "name": "y"})
    assert decode_actor(base64.urlsafe_b64encode(wrong_type).decode()) is None


def test_events_carry_the_bound_actor_and_read_as_before_without_one() -> None:
    def made() -> bytes:
        set_actor(DANA)
        return make_event(
            "identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="identity"
        ).to_json()

    body = contextvars.copy_context().run(made)
    assert parse_envelope(body).actor == DANA
    plain = make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="x")
    assert plain.actor is None and b'"actor"' not in plain.to_json()
    explicit = make_event(
        "identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="x", actor=CRM
    )
    assert parse_envelope(explicit.to_json()).actor == CRM


@pytest.fixture
async def service() -> AsyncIterator[str]:
    """A service whose one route answers the actor it was given, and the actor a freshly
    made event carries; the gateway and invitations may call it."""

    async def whoami(request: web.Request) -> web.Response:
        actor = current_actor()
        event = make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="s")
        return json_response(
            {
                "actor": actor.model_dump() if actor else None,
                "event_actor": event.actor.model_dump() if event.actor else None,
            }
        )

    settings = CommonSettings.model_validate(
        {"service_key": encode_private(KEYS["identity"]), "service_public_keys": TABLE}
    )
    app = base_app("identity")
    app.router.add_get("/whoami", whoami)
    require_service_proof(app, settings, {"GET /whoami": {"gateway", "invitations"}})
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_the_gateway_sends_the_actor_and_the_service_stamps_it(service: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = ServiceClient(session, service, "identity", signer=signer("gateway"))

        async def as_dana() -> dict[str, object]:
            set_actor(DANA)
            answer: dict[str, object] = await client.call("GET", "/whoami")
            return answer

        # In a task of its own: what it binds stays in it, like a request's.
        answer = await asyncio.create_task(as_dana())
        assert answer == {"actor": DANA.model_dump(), "event_actor": DANA.model_dump()}
        # The next request on the same connection, with nobody bound: nobody.
        assert await client.call("GET", "/whoami") == {"actor": None, "event_actor": None}


async def test_an_actor_from_any_caller_but_the_gateway_is_ignored(service: str) -> None:
    forged = encode_actor(Actor(type="user", id="admin", name="admin@example.com"))
    async with aiohttp.ClientSession() as session:
        # Another service with a valid proof of its own, naming an actor: not believed.
        headers = {ACTOR_HEADER: forged, **signer("invitations").headers_for("identity")}
        async with session.get(service + "/whoami", headers=headers) as response:
            assert response.status == 200
            assert await response.json() == {"actor": None, "event_actor": None}
        # And a service's client never passes the actor on.
        client = ServiceClient(session, service, "identity", signer=signer("invitations"))

        async def relayed() -> dict[str, object]:
            set_actor(DANA)
            answer: dict[str, object] = await client.call("GET", "/whoami")
            return answer

        assert await asyncio.create_task(relayed()) == {"actor": None, "event_actor": None}
        # Without any proof, the header gets nothing but a 401.
        async with session.get(service + "/whoami", headers={ACTOR_HEADER: forged}) as response:
            assert response.status == 401
        # The gateway's proof with an unreadable header: nobody, and the change still goes.
        headers = {ACTOR_HEADER: "not-an-actor", **signer("gateway").headers_for("identity")}
        async with session.get(service + "/whoami", headers=headers) as response:
            assert await response.json() == {"actor": None, "event_actor": None}
