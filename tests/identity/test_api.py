"""The identity HTTP API through the real app (create_app), database and broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.identity.api import BACKGROUND
from tests.identity.helpers import STRONG, Clock, new_email, outbox_events
from tests.support.env import TestEnv
from tests.support.management import management_client
from tests.support.raw_http import raw_request

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def _error(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


async def test_users_endpoints(client: Client, test_env: TestEnv) -> None:
    email = new_email("api")
    response = await client.post(
        "/users", json={"email": email, "password": STRONG, "role": "client"}
    )
    assert response.status == 201
    user = await response.json()
    assert set(user) == {"id", "email", "role", "disabled", "created_at", "locale", "time_zone"}
    assert user["role"] == "client" and user["disabled"] is False
    assert user["locale"] is None and user["time_zone"] is None

    response = await client.post(
        "/users", json={"email": email, "password": STRONG, "role": "client"}
    )
    assert await _error(response, 409) == "email_taken"
    response = await client.post("/users", json={"email": new_email(), "password": "short"})
    assert await _error(response, 422) == "weak_password"
    response = await client.post("/users", json={"email": "a@b.com\r\nx", "password": STRONG})
    assert await _error(response, 422) == "invalid_email"
    response = await client.post("/users", data=b"{not json")
    assert await _error(response, 400) == "invalid_json"

    assert (await (await client.get(f"/users/{user['id']}")).json()) == user
    assert await _error(await client.get(f"/users/{uuid.uuid4()}"), 404) == "user_not_found"
    assert await _error(await client.get("/users/not-a-uuid"), 404) == "user_not_found"
    # a screen's users in one request: the ones that exist, an unknown id simply absent
    response = await client.post("/users/by-id", json={"ids": [user["id"], str(uuid.uuid4())]})
    assert (await response.json()) == {"items": [user]}
    too_many = [str(uuid.uuid4()) for _ in range(501)]
    response = await client.post("/users/by-id", json={"ids": too_many})
    assert await _error(response, 422) == "invalid_input"
    # the invitations service's question (is the invited email someone's already?)
    as_invitations = test_env.keys.headers("invitations", "identity")
    lookup = "/users/lookup"
    response = await client.get(lookup, params={"email": email.upper()}, headers=as_invitations)
    assert (await response.json())["id"] == user["id"]
    response = await client.get(lookup, params={"email": new_email()}, headers=as_invitations)
    assert await _error(response, 404) == "user_not_found"

    response = await client.get("/users", params={"q": email.split("@")[0].upper(), "limit": "1"})
    page = await response.json()
    assert page == {"items": [user], "next_cursor": None}
    assert await _error(await client.get("/users", params={"limit": "500"}), 422) == "invalid_input"

    response = await client.post(f"/users/{user['id']}/password", json={"password": "x"})
    assert await _error(response, 422) == "weak_password"
    session = await (await client.post("/sessions/issue", json={"user_id": user["id"]})).json()
    response = await client.post(
        f"/users/{user['id']}/password", json={"password": "new passphrase here"}
    )
    assert response.status == 204
    # Setting a password ends the account's other sessions.
    gone = await client.get("/sessions/current", headers={"X-Session-Token": session["token"]})
    assert await _error(gone, 401) == "no_session"

    response = await client.post(f"/users/{user['id']}/disable")
    assert response.status == 200 and (await response.json())["disabled"] is True


async def test_ensure_endpoint(client: Client) -> None:
    email, invitation = new_email("api-ensure"), str(uuid.uuid4())
    body = {"email": email, "password": STRONG, "invitation_id": invitation}
    first = await client.post("/users/ensure", json=body)
    assert first.status == 201
    created = await first.json()
    assert created["created"] is True and created["user"]["role"] == "client"
    again = await client.post("/users/ensure", json=body)
    assert again.status == 200
    assert (await again.json()) == {"user": created["user"], "created": False}
    other = await client.post("/users/ensure", json={**body, "invitation_id": str(uuid.uuid4())})
    assert await _error(other, 409) == "account_exists"


async def test_ensure_for_a_staff_invitation_creates_the_invited_role(client: Client) -> None:
    invitation = str(uuid.uuid4())
    for role in ("staff", "administrator"):
        email = new_email(f"api-ensure-{role}")
        body = {"email": email, "password": STRONG, "invitation_id": invitation, "role": role}
        first = await client.post("/users/ensure", json=body)
        assert first.status == 201
        assert (await first.json())["user"]["role"] == role
        # A retry of the same link finds the account, with the role it was made with.
        again = await client.post("/users/ensure", json=body)
        assert again.status == 200 and (await again.json())["user"]["role"] == role
    unknown = await client.post(
        "/users/ensure",
        json={
            "email": new_email("api-ensure-owner"),
            "password": STRONG,
            "invitation_id": invitation,
            "role": "owner",
        },
    )
    assert unknown.status == 422


async def test_session_endpoints(client: Client, clock: Clock) -> None:
    email = new_email("api-session")
    user = await (await client.post("/users", json={"email": email, "password": STRONG})).json()
    response = await client.post("/sessions", json={"email": email, "password": "wrong passphrase"})
    assert await _error(response, 401) == "invalid_credentials"
    response = await client.post("/sessions", json={"email": new_email(), "password": STRONG})
    assert await _error(response, 401) == "invalid_credentials"

    response = await client.post("/sessions", json={"email": email, "password": STRONG})
    assert response.status == 201
    login = await response.json()
    assert login["user"] == user and login["token"] and login["expires_at"]
    headers = {"X-Session-Token": login["token"]}

    current = await (await client.get("/sessions/current", headers=headers)).json()
    assert current["user"] == user
    assert {"id", "created_at", "expires_at", "idle_expires_at"} <= set(current["session"])
    assert current["session"]["expires_at"] == login["expires_at"]
    # The answer at log in is the one the gateway keeps: the same session, same limits.
    assert login["session"]["id"] == current["session"]["id"]
    assert login["session"]["expires_at"] == current["session"]["expires_at"]
    assert login["session"]["idle_expires_at"] <= current["session"]["idle_expires_at"]

    assert await _error(await client.get("/sessions/current"), 401) == "no_session"
    response = await client.get("/sessions/current", headers={"X-Session-Token": "nope"})
    assert await _error(response, 401) == "no_session"

    clock.advance(minutes=121)
    assert await _error(await client.get("/sessions/current", headers=headers), 401) == "no_session"

    issued = await client.post("/sessions/issue", json={"user_id": user["id"]})
    assert issued.status == 201
    token = (await issued.json())["token"]
    response = await client.delete("/sessions/current", headers={"X-Session-Token": token})
    assert response.status == 204
    response = await client.get("/sessions/current", headers={"X-Session-Token": token})
    assert await _error(response, 401) == "no_session"
    response = await client.post("/sessions/issue", json={"user_id": str(uuid.uuid4())})
    assert await _error(response, 404) == "user_not_found"


async def test_login_settings(client: Client) -> None:
    assert (await (await client.get("/settings/login")).json()) == {"login_redirect": False}
    response = await client.put("/settings/login", json={"login_redirect": True})
    assert (await response.json()) == {"login_redirect": True}
    assert (await (await client.get("/settings/login")).json()) == {"login_redirect": True}
    response = await client.put("/settings/login", json={"login_redirect": "sometimes"})
    assert await _error(response, 422) == "invalid_input"
    await client.put("/settings/login", json={"login_redirect": False})


async def test_password_reset_endpoints(client: Client, pool: asyncpg.Pool) -> None:
    email = new_email("api-reset")
    user = await (await client.post("/users", json={"email": email, "password": STRONG})).json()
    for address in (email, new_email("nobody"), "garbage"):
        response = await client.post("/password-resets", json={"email": address})
        assert response.status == 202
    await client.app[BACKGROUND].drain()  # the answer came first; the work follows it
    jobs = [
        j for j in await outbox_events(pool, "mail.requested") if j["data"]["to"] == user["email"]
    ]
    assert len(jobs) == 1
    url = jobs[0]["data"]["context"]["reset_url"]
    assert url.startswith("https://portal.example.com/reset-password?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]

    response = await client.get("/password-resets/validate", params={"token": token})
    assert (await response.json()) == {"email": user["email"]}
    response = await client.get("/password-resets/validate", params={"token": "nope"})
    assert await _error(response, 404) == "reset_invalid"
    response = await client.post(
        "/password-resets/confirm", json={"token": token, "password": "brand new passphrase"}
    )
    assert response.status == 204
    # Used: 410 reset_expired as for a link out of time, its reason telling them apart.
    for response in (
        await client.post(
            "/password-resets/confirm", json={"token": token, "password": "brand new passphrase"}
        ),
        await client.get("/password-resets/validate", params={"token": token}),
    ):
        assert response.status == 410, await response.text()
        error = (await response.json())["error"]
        assert (error["code"], error["reason"]) == ("reset_expired", "used"), error
    login = await client.post(
        "/sessions", json={"email": email, "password": "brand new passphrase"}
    )
    assert login.status == 201


async def test_health_and_readiness_on_the_management_app(client: Client) -> None:
    async with management_client(client.app) as management:
        assert (await management.get("/healthz")).status == 200
        # The broker is reached in the background: ready at once, the broker "ok" soon.
        for _ in range(100):
            response = await management.get("/readyz")
            assert response.status == 200
            checks = (await response.json())["checks"]
            if checks["broker"] == "ok" and checks.get("consumer") == "ok":
                break
            await asyncio.sleep(0.1)
        assert checks == {"database": "ok", "schema": "ok", "broker": "ok", "consumer": "ok"}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 404, path


async def test_a_session_token_of_any_bytes_is_no_session(
    client: Client, migrated_schemas: TestEnv
) -> None:
    """X-Session-Token holding a byte that isn't UTF-8 (aiohttp hands it on as a lone
    surrogate) is a token like any unknown one: 401 no_session, 204 on logout."""
    proof = migrated_schemas.keys.headers("gateway", "identity")["Authorization"].encode()
    head = b"\r\nAuthorization: " + proof + b"\r\nX-Session-Token: \xff\xfe" + b"a" * 41
    status, _, body = await raw_request(client.server, b"GET /sessions/current HTTP/1.1" + head)
    assert (status, orjson.loads(body)["error"]["code"]) == (401, "no_session")
    status, _, _ = await raw_request(client.server, b"DELETE /sessions/current HTTP/1.1" + head)
    assert status == 204  # as for any session it doesn't know


async def test_openapi_document_lists_every_route(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert {"post", "get"} <= set(doc["paths"]["/users"])
    assert "requestBody" in doc["paths"]["/users/ensure"]["post"]
    assert len(doc["paths"]) == 23
    assert "409 last_administrator" in doc["paths"]["/users/{user_id}/erase"]["post"]["description"]
    assert "requestBody" in doc["paths"]["/users/by-id"]["post"]
    assert "put" in doc["paths"]["/users/{user_id}/preferences"]
    assert "parameters" in doc["paths"]["/activity"]["get"]
    # OpenAPI 3.1 (4.8.12.4): a parameter has a schema or a content, else tools that read
    # the document (client generators, schemathesis) refuse the operation.
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                assert "schema" in parameter or "content" in parameter, (method, path, parameter)


LANGUAGE_MESSAGE = "Language (locale) must be one of en, de, fr, es."
ZONE_MESSAGE = "Time zone must be an IANA time zone name such as Europe/Berlin."


async def test_preferences_are_set_shown_everywhere_and_cleared(
    client: Client, pool: asyncpg.Pool
) -> None:
    email = new_email("prefs")
    response = await client.post("/users", json={"email": email, "password": STRONG})
    user = await response.json()
    url = f"/users/{user['id']}/preferences"

    response = await client.put(url, json={"locale": "de", "time_zone": "Europe/Berlin"})
    assert response.status == 200, await response.text()
    changed = await response.json()
    assert changed == {**user, "locale": "de", "time_zone": "Europe/Berlin"}
    assert await (await client.get(f"/users/{user['id']}")).json() == changed
    page = await (await client.get("/users", params={"q": email.split("@")[0]})).json()
    assert page["items"] == [changed]

    # Every session answer carries them too: issue, login and the current session.
    issued = await (await client.post("/sessions/issue", json={"user_id": user["id"]})).json()
    assert issued["user"]["locale"] == "de" and issued["user"]["time_zone"] == "Europe/Berlin"
    login = await (await client.post("/sessions", json={"email": email, "password": STRONG})).json()
    assert login["user"] == changed
    current = await client.get("/sessions/current", headers={"X-Session-Token": issued["token"]})
    assert (await current.json())["user"] == changed

    # null (or left out) means "not chosen".
    response = await client.put(url, json={"locale": None})
    assert await response.json() == {**user, "locale": None, "time_zone": None}

    # Each change is announced, so every gateway replica forgets its copy of the user.
    announced = [
        e["data"]
        for e in await outbox_events(pool, "identity.user.preferences_changed")
        if e["data"]["user_id"] == user["id"]
    ]
    assert announced == [
        {"user_id": user["id"], "locale": "de", "time_zone": "Europe/Berlin"},
        {"user_id": user["id"], "locale": None, "time_zone": None},
    ]


async def test_preferences_refusals(client: Client) -> None:
    response = await client.post("/users", json={"email": new_email("prefs"), "password": STRONG})
    user = await response.json()
    url = f"/users/{user['id']}/preferences"
    for body, code, message in (
        ({"locale": "it"}, "invalid_locale", LANGUAGE_MESSAGE),
        ({"locale": "DE"}, "invalid_locale", LANGUAGE_MESSAGE),
        ({"locale": ""}, "invalid_locale", LANGUAGE_MESSAGE),
        ({"time_zone": "Mars/Olympus"}, "invalid_time_zone", ZONE_MESSAGE),
        ({"locale": "fr", "time_zone": "CET+1"}, "invalid_time_zone", ZONE_MESSAGE),
    ):
        response = await client.put(url, json=body)
        assert await _error(response, 422) == code, body
        assert (await response.json())["error"]["message"] == message
    # Nothing was saved by a refused request.
    assert await (await client.get(f"/users/{user['id']}")).json() == user
    response = await client.put(f"/users/{uuid.uuid4()}/preferences", json={"locale": "de"})
    assert await _error(response, 404) == "user_not_found"
    response = await client.put(url, json={"locale": ["de"]})
    assert await _error(response, 422) == "invalid_input"


async def test_ensure_sets_the_invitations_locale_on_a_new_account_only(client: Client) -> None:
    email, invitation = new_email("ensure-locale"), str(uuid.uuid4())
    body = {"email": email, "password": STRONG, "invitation_id": invitation, "locale": "fr"}
    response = await client.post("/users/ensure", json=body)
    assert response.status == 201
    user = (await response.json())["user"]
    assert user["locale"] == "fr" and user["time_zone"] is None

    # The account's own choice wins over a later invitation's language.
    await client.put(f"/users/{user['id']}/preferences", json={"locale": "es"})
    response = await client.post("/users/ensure", json={**body, "locale": "de"})
    assert response.status == 200
    assert (await response.json())["user"]["locale"] == "es"

    response = await client.post(
        "/users/ensure",
        json={**body, "email": new_email("ensure-locale"), "locale": "klingon"},
    )
    assert await _error(response, 422) == "invalid_locale"
    # Without a locale the account has none (pages follow the browser and the branding).
    response = await client.post(
        "/users/ensure",
        json={"email": new_email("ensure-locale"), "password": STRONG, "invitation_id": invitation},
    )
    assert (await response.json())["user"]["locale"] is None
