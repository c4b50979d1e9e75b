"""/api/v1: admin session + X-CSRF-Token, forwarding, validation and JSON errors."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from services.gateway.views.openapi import OPENAPI
from tests.gateway.conftest import csrf, log_in
from tests.gateway.fakes import Backend

PASSWORD = "correct horse battery"


async def admin_headers(gw: TestClient, backend: Backend) -> dict[str, str]:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return {"X-CSRF-Token": await csrf(gw)}


async def test_portals_create_list_get_patch(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    created = await gw.post(
        "/api/v1/portals", json={"title": "Acme", "status": "active"}, headers=headers
    )
    assert created.status == 201
    portal = await created.json()
    listed = await (await gw.get("/api/v1/portals?status=active")).json()
    assert [p["id"] for p in listed["items"]] == [portal["id"]]
    assert (await gw.get(f"/api/v1/portals/{portal['id']}")).status == 200
    patched = await gw.patch(
        f"/api/v1/portals/{portal['id']}", json={"status": "archived"}, headers=headers
    )
    assert (await patched.json())["status"] == "archived"


async def test_unsafe_api_call_needs_the_csrf_header(gw: TestClient, backend: Backend) -> None:
    await admin_headers(gw, backend)
    response = await gw.post("/api/v1/portals", json={"title": "Acme"})
    assert response.status == 403
    body = await response.json()
    assert body["error"]["code"] == "csrf_failed"


async def test_an_origin_of_any_characters_is_refused_as_another_site(
    gw: TestClient, backend: Backend
) -> None:
    headers = await admin_headers(gw, backend)
    for origin in ("http://é.example", "http://bücher.example:8080"):
        response = await gw.post(
            "/api/v1/portals", json={"title": "Acme"}, headers={**headers, "Origin": origin}
        )
        assert response.status == 403, origin
        assert (await response.json())["error"]["code"] == "csrf_failed"
    assert not backend.portals


async def test_bad_bodies_are_422_json(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    for body in ({"title": ""}, {"title": "x", "status": "open"}, {"title": "x", "extra": 1}):
        response = await gw.post("/api/v1/portals", json=body, headers=headers)
        assert response.status == 422
        assert (await response.json())["error"]["code"] == "invalid_input"
    response = await gw.get("/api/v1/invitations?limit=999")
    assert response.status == 422


async def test_a_value_a_pattern_refuses_is_told_what_it_should_look_like(
    gw: TestClient, backend: Backend
) -> None:
    headers = await admin_headers(gw, backend)
    response = await gw.post(
        "/api/v1/portals", json={"title": "x", "slug": "Spring Launch!"}, headers=headers
    )
    assert response.status == 422
    assert (await response.json())["error"]["message"] == (
        "slug: Use lower-case letters, digits and single hyphens, e.g. acme-rebrand."
    )
    rows = {"invitations": [{"email": "ann@example.com", "key": "clé-1"}]}
    response = await gw.post(
        f"/api/v1/portals/{uuid.uuid4()}/invitations/batch", json=rows, headers=headers
    )
    assert response.status == 422
    assert (await response.json())["error"]["message"] == (
        "invitations.0.key: A key must be printable ASCII characters."
    )


async def test_invite_is_201_then_200_resent(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    path = f"/api/v1/portals/{portal['id']}/invitations"
    first = await gw.post(path, json={"email": "a@b.example"}, headers=headers)
    assert first.status == 201 and (await first.json())["outcome"] == "created"
    again = await gw.post(path, json={"email": "a@b.example"}, headers=headers)
    assert again.status == 200 and (await again.json())["outcome"] == "resent"
    bad = await gw.post(path, json={"email": "a@b.example, c@d.example"}, headers=headers)
    assert bad.status == 422
    archived = backend.add_portal("Old", status="archived")
    refused = await gw.post(
        f"/api/v1/portals/{archived['id']}/invitations",
        json={"email": "a@b.example"},
        headers=headers,
    )
    assert refused.status == 409
    assert (await refused.json())["error"]["code"] == "portal_not_active"
    listed = await (await gw.get("/api/v1/invitations?status=pending")).json()
    invitation_id = listed["items"][0]["id"]
    revoked = await gw.post(f"/api/v1/invitations/{invitation_id}/revoke", headers=headers)
    assert (await revoked.json())["status"] == "revoked"


async def test_client_and_sub_clients_check_users_exist(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    ann = backend.add_user("ann@example.com", PASSWORD)
    ok = await gw.put(
        f"/api/v1/portals/{portal['id']}/client", json={"user_id": ann["id"]}, headers=headers
    )
    assert (await ok.json())["client_id"] == ann["id"]
    bad = await gw.put(
        f"/api/v1/portals/{portal['id']}/sub-clients",
        json={"user_ids": [str(uuid.uuid4())]},
        headers=headers,
    )
    assert bad.status == 422
    assert (await bad.json())["error"]["code"] == "user_not_found"


async def test_settings_access_combines_both_owners(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    assert await (await gw.get("/api/v1/settings/access")).json() == {
        "invitation_expiry_days": 14,
        "invitation_reminder_days": 0,
        "login_redirect": False,
    }
    response = await gw.put(
        "/api/v1/settings/access",
        json={"invitation_expiry_days": 21, "login_redirect": True},
        headers=headers,
    )
    assert await response.json() == {
        "invitation_expiry_days": 21,
        "invitation_reminder_days": 0,
        "login_redirect": True,
    }
    response = await gw.put(
        "/api/v1/settings/access", json={"invitation_reminder_days": 3}, headers=headers
    )
    assert await response.json() == {
        "invitation_expiry_days": 21,
        "invitation_reminder_days": 3,
        "login_redirect": True,
    }
    for bad_body in ({"invitation_expiry_days": 10}, {"invitation_reminder_days": 2}):
        bad = await gw.put("/api/v1/settings/access", json=bad_body, headers=headers)
        assert bad.status == 422


async def test_unknown_api_path_is_json_404(gw: TestClient, backend: Backend) -> None:
    await admin_headers(gw, backend)
    response = await gw.get("/api/v1/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_openapi_document_lists_every_api_route(gw: TestClient) -> None:
    doc = await (await gw.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for route in gw.server.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if (
            not path.startswith("/api/v1/")
            or route.method == "HEAD"
            or path.endswith("openapi.json")
        ):
            continue
        key = path.removeprefix("/api/v1")
        assert key in doc["paths"], key
        assert route.method.lower() in doc["paths"][key], (route.method, key)


async def test_a_method_the_route_lacks_is_405_with_allow(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    response = await gw.delete("/api/v1/portals", headers=headers)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    # RFC 9110 15.5.6: a 405 must say which methods the resource takes, page or API.
    assert set(response.headers.get("Allow", "").split(", ")) == {"GET", "HEAD", "POST"}
    form = {"csrf_token": headers["X-CSRF-Token"]}
    page = await gw.request("PUT", "/admin/portals", data=form)
    assert page.status == 405
    assert set(page.headers.get("Allow", "").split(", ")) == {"GET", "HEAD"}


async def test_a_body_over_the_limit_is_413_body_too_large_as_documented(
    gw: TestClient, backend: Backend
) -> None:
    headers = await admin_headers(gw, backend)
    portal = await (
        await gw.post("/api/v1/portals", json={"title": "Acme"}, headers=headers)
    ).json()
    big = "x" * 100_000
    for method, path, body in (
        ("PUT", f"/api/v1/portals/{portal['id']}/client", {"user_id": None, "x": big}),
        ("POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": big}),
        ("PUT", "/api/v1/settings/access", {"x": big}),
    ):
        response = await gw.request(method, path, json=body, headers=headers)
        assert response.status == 413, path
        assert (await response.json())["error"]["code"] == "body_too_large", path
        assert (
            "413"
            in OPENAPI["paths"][path.removeprefix("/api/v1").replace(portal["id"], "{id}")][
                method.lower()
            ]["responses"]
        ), path
