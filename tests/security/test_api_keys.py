"""Integration keys on the real stack: each scope allows exactly its routes (every /api
route of the route table, walked for every scope), administrators' routes refuse every
integration key, two keys live at once for a rotation, a revoked key stops at once, the
bootstrap key (GATEWAY_API_KEY) keeps every right, and the key sent an invitation is named
as its inviter."""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp
import pytest

from services.gateway.domain import KEY_SCOPES
from services.gateway.security import ADMIN_ONLY_API, API_SCOPES
from tests.security.conftest import api, cookie, unique_email
from tests.security.flows import new_portal
from tests.security.test_routes import PUBLIC_API, concrete, route_table
from tests.support.stack import API_KEY, Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def api_routes() -> list[tuple[str, str]]:
    return [(m, p) for m, p in route_table() if p.startswith("/api/") and p not in PUBLIC_API]


async def _with_key(
    stack: Stack, key: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            stack.public_url + path,
            json=body if body is not None else ({} if method != "GET" else None),
            headers={"Authorization": f"Bearer {key}"},
            allow_redirects=False,
        ) as response,
    ):
        text = await response.text()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, text


async def _new_key(admin: Browser, name: str, scopes: list[str]) -> dict[str, Any]:
    status, made = await api(admin, "POST", "/api/v1/keys", {"name": name, "scopes": scopes})
    assert status == 201, made
    assert set(made) == {"id", "name", "scopes", "prefix", "created_at", "last_used_at", "key"}
    return dict(made)


def test_every_api_route_has_a_scope_or_is_for_administrators_only() -> None:
    routes = set(api_routes())
    scoped, admin_only = set(API_SCOPES), set(ADMIN_ONLY_API)
    assert not scoped & admin_only, scoped & admin_only
    assert routes == scoped | admin_only, (
        routes - scoped - admin_only,
        scoped | admin_only - routes,
    )
    assert set(API_SCOPES.values()) == set(KEY_SCOPES)


async def test_each_scope_allows_exactly_its_routes(stack: Stack, admin: Browser) -> None:
    keys = {scope: (await _new_key(admin, f"only {scope}", [scope]))["key"] for scope in KEY_SCOPES}
    wrong = []
    for method, pattern in api_routes():
        path = concrete(pattern)
        needed = API_SCOPES.get((method, pattern))
        for scope, key in keys.items():
            status, body = await _with_key(stack, key, method, path)
            refused = status == 403 and body["error"]["code"] == "insufficient_scope"
            if refused == (scope == needed) or status == 401:
                wrong.append((method, pattern, scope, status, body))
    assert not wrong, wrong


async def test_a_key_reads_and_writes_within_its_scopes(stack: Stack, admin: Browser) -> None:
    portal = await new_portal(admin)
    writer = (await _new_key(admin, "CRM sync", ["invitations:write", "invitations:read"]))["key"]
    email = unique_email("keyed")
    status, made = await _with_key(
        stack, writer, "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": email}
    )
    assert status == 201, made
    assert made["invitation"]["invited_by"] == "CRM sync"  # the key's name, not "api"
    # The caller may name the person behind the call; the email says who invited.
    named = unique_email("named")
    status, made = await _with_key(
        stack,
        writer,
        "POST",
        f"/api/v1/portals/{portal['id']}/invitations",
        {"email": named, "invited_by": "  Dana\nLee "},
    )
    assert status == 201 and made["invitation"]["invited_by"] == "Dana Lee", made
    message = (await stack.sink.wait_for(named))[-1]
    assert "Dana Lee has invited you" in message.get_body(("plain",)).get_content()
    status, page = await _with_key(stack, writer, "GET", "/api/v1/invitations?status=pending")
    assert status == 200 and email in {item["email"] for item in page["items"]}
    status, body = await _with_key(stack, writer, "GET", f"/api/v1/portals/{portal['id']}")
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert "portals:read" in body["error"]["message"]


async def test_rotation_with_two_live_keys_then_the_old_one_revoked(
    stack: Stack, admin: Browser
) -> None:
    old = await _new_key(admin, "billing (old)", ["portals:read"])
    new = await _new_key(admin, "billing (new)", ["portals:read"])
    for key in (old, new):
        assert (await _with_key(stack, key["key"], "GET", "/api/v1/portals"))[0] == 200
    status, _ = await api(admin, "DELETE", f"/api/v1/keys/{old['id']}")
    assert status == 204
    status, body = await _with_key(stack, old["key"], "GET", "/api/v1/portals")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert (await _with_key(stack, new["key"], "GET", "/api/v1/portals"))[0] == 200
    status, listed = await api(admin, "GET", "/api/v1/keys")
    ids = {item["id"] for item in listed["items"]}
    assert new["id"] in ids and old["id"] not in ids
    used = next(item for item in listed["items"] if item["id"] == new["id"])
    assert used["last_used_at"] is not None
    assert all("key" not in item for item in listed["items"])
    status, _ = await api(admin, "DELETE", f"/api/v1/keys/{uuid.uuid4()}")
    assert status == 404


async def test_keys_are_managed_by_administrators_and_the_bootstrap_key_only(
    stack: Stack, admin: Browser
) -> None:
    every = await _new_key(admin, "all scopes", list(KEY_SCOPES))
    status, body = await _with_key(
        stack,
        every["key"],
        "POST",
        "/api/v1/keys",
        {"name": "escalate", "scopes": list(KEY_SCOPES)},
    )
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    bootstrap = API_KEY
    status, made = await _with_key(
        stack,
        bootstrap,
        "POST",
        "/api/v1/keys",
        {"name": "from bootstrap", "scopes": ["users:read"]},
    )
    assert status == 201 and made["key"].startswith("cpk_")
    status, body = await api(admin, "POST", "/api/v1/keys", {"name": "x", "scopes": ["root"]})
    assert (status, body["error"]["code"]) == (422, "invalid_scopes")


@pytest.mark.parametrize("presented", ["cpk_not-a-key", "cpk_" + "A" * 43, "cpk_" + "A" * 5000])
async def test_an_unknown_key_is_refused_on_every_route(stack: Stack, presented: str) -> None:
    status, body = await _with_key(stack, presented, "GET", "/api/v1/portals")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_the_api_keys_page_shows_a_new_key_once_and_revokes_it(
    stack: Stack, admin: Browser
) -> None:
    status, _, html = await admin.get("/admin/settings")
    assert status == 200 and 'href="/admin/settings/api-keys"' in html
    status, _, html = await admin.get("/admin/settings/api-keys")
    assert status == 200 and "Create Key" in html
    for scope in KEY_SCOPES:
        assert f">{scope}</label>" in html
    form = [
        ("csrf_token", cookie(admin, "cp_csrf") or ""),
        ("name", "Zapier"),
        ("scopes", "portals:read"),
        ("scopes", "users:read"),
    ]
    async with admin.session.post(
        admin.base + "/admin/settings/api-keys", data=form, allow_redirects=False
    ) as response:
        assert response.status == 201
        assert response.headers["Cache-Control"] == "no-store"
        html = await response.text()
    key = re.search(r'id="created-key"[^>]*value="(cpk_[^"]+)"', html)
    assert key, html
    assert (await _with_key(stack, key.group(1), "GET", "/api/v1/users"))[0] == 200
    # Shown once: the list has the prefix and the last use, never the key.
    status, _, html = await admin.get("/admin/settings/api-keys")
    assert key.group(1) not in html and "Zapier" in html and "portals:read, users:read" in html
    assert "Never" not in html.split("Zapier", 1)[1].split("</tr>", 1)[0]
    # A key without a scope is refused with the form kept.
    refused = [("csrf_token", cookie(admin, "cp_csrf") or ""), ("name", "Nothing")]
    async with admin.session.post(
        admin.base + "/admin/settings/api-keys", data=refused, allow_redirects=False
    ) as response:
        assert response.status == 422
        assert "Choose at least one scope" in await response.text()
    status, listed = await api(admin, "GET", "/api/v1/keys")
    made = next(item for item in listed["items"] if item["name"] == "Zapier")
    async with admin.session.post(
        admin.base + f"/admin/settings/api-keys/{made['id']}/revoke",
        data={"csrf_token": cookie(admin, "cp_csrf") or ""},
    ) as response:
        assert response.status == 200
        assert "API key Zapier revoked." in await response.text()
    status, body = await _with_key(stack, key.group(1), "GET", "/api/v1/users")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
