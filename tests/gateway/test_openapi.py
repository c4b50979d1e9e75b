"""The published contract (issue 18): /api/v1/openapi.json is built from the models the
routes declare, equals the committed docs/openapi.json byte for byte, and its reference
page /api/docs is served from our origin with no script (the strict CSP holds). Also the
two reads added with it: GET /api/v1/invitations/{id} and the list's email filter."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from html import unescape
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from services.gateway.views import api
from services.gateway.views.openapi import OPENAPI
from services.invitations import openapi as invitations_openapi
from tests.gateway.conftest import csrf, log_in, make_settings
from tests.gateway.fakes import Backend
from tests.support.raw_http import raw_request

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
PASSWORD = "correct horse battery"


async def test_the_committed_document_is_the_one_the_gateway_serves(gw: TestClient) -> None:
    response = await gw.get("/api/v1/openapi.json")  # public: no session, no key
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.read() == COMMITTED.read_bytes(), "run: make openapi"
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_openapi.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_the_document_is_made_of_the_routes_models() -> None:
    schemas = OPENAPI["components"]["schemas"]
    # Every reference resolves inside the document.
    for ref in _refs(OPENAPI):
        section, _, name = ref.removeprefix("#/components/").partition("/")
        assert name in OPENAPI["components"][section], ref
    # A route's body is its pydantic model's schema: change the model, the document follows.
    invite = OPENAPI["paths"]["/portals/{id}/invitations"]["post"]
    body_ref = invite["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[body_ref.rsplit("/", 1)[1]]["properties"].keys() == (
        api.InviteBody.model_json_schema()["properties"].keys()
    )
    assert schemas["PortalCreate"]["additionalProperties"] is False
    listed = OPENAPI["paths"]["/invitations"]["get"]["parameters"]
    assert [p["name"] for p in listed] == list(api.InvitationQuery.model_fields)
    # Every declared route is in the document, with the aiohttp pattern for its {id}.
    assert len(api.API.endpoints) == sum(len(m) for m in OPENAPI["paths"].values())
    assert {"/invitations/{id}", "/users", "/settings/access"} <= set(OPENAPI["paths"])
    one = OPENAPI["paths"]["/invitations/{id}"]["get"]
    assert one["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    assert set(one["responses"]) == {"200", "401", "403", "404", "503"}


# The /api/v1 routes that forward to one route of the invitations service, and that route.
FORWARDED = {
    ("post", "/portals/{id}/invitations"): ("post", "/invitations"),
    ("post", "/invitations"): ("post", "/invitations/group"),
    ("post", "/invitations/{id}/resend"): ("post", "/invitations/{id}/resend"),
    ("post", "/invitations/{id}/revoke"): ("post", "/invitations/{id}/revoke"),
    ("post", "/staff-invitations"): ("post", "/staff-invitations"),
}


def _refusals(errors: Any) -> set[str]:
    """``"429 send_rate_limited (Retry-After, …)"`` → ``"429 send_rate_limited"``: the 4xx
    refusals a route lists, except 422s (the gateway checks the body first, in its words)."""
    found = {" ".join(str(e).split()[:2]) for e in errors}
    return {e for e in found if e[0] == "4" and not e.startswith("422")}


def test_a_forwarding_route_documents_every_refusal_the_invitations_service_gives() -> None:
    upstream = {(op[0], op[1]): op[8] for op in invitations_openapi.OPERATIONS}
    declared = {(e.method.lower(), e.path): e.errors for e in api.API.endpoints}
    for route, target in FORWARDED.items():
        responses = OPENAPI["paths"][route[1]][route[0]]["responses"]
        missing = _refusals(upstream[target]) - _refusals(declared[route])
        assert not missing, (route, missing)
        assert {r.split()[0] for r in _refusals(upstream[target])} <= set(responses), route


async def test_the_reference_page_is_self_hosted_and_script_free(gw: TestClient) -> None:
    response = await gw.get("/api/docs")  # public, like the document
    assert response.status == 200
    assert response.content_type == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = await response.text()
    assert "<script" not in html.lower()
    assert not re.search(r"\sstyle=|\son[a-z]+=", html, re.I), "no inline style or handler"
    # Nothing from another origin: every stylesheet, link and image is ours.
    for url in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert url.startswith(("/", "#")), url
    (sheet,) = re.findall(
        r'<link rel="stylesheet" href="(/static/api-docs\.[0-9a-f]{16}\.css)">', html
    )
    assert (await gw.get(sheet)).status == 200
    for path, methods in OPENAPI["paths"].items():
        for method, operation in methods.items():
            assert f"/api/v1{path}" in html, path
            assert operation["summary"] in unescape(html), (method, path)
    assert 'id="schema-Invitation"' in html


# Pages and files anyone may fetch: what they answer doesn't depend on who asks.
PUBLIC_PAGES = (
    "/api/v1/openapi.json",
    "/api/docs",
    "/login",
    "/forgot-password",
    "/invitations/accept?token=" + "t" * 43,
    "/static/app.css",
)


async def test_a_public_document_is_served_whatever_credentials_come_with_it(
    gw: TestClient, backend: Backend
) -> None:
    """The document and its reference page are public (README, The contract): a stale
    key in a client's configuration, or a cookie of an ended session, gets them as no key
    does, as the login page, the accept page and the static files always did. A key
    that isn't live is refused where it would grant something: every other /api route."""
    revoked, _ = backend.add_api_key("old", ["portals:read"])
    del backend.api_keys[revoked]
    stale = [
        {"Authorization": f"Bearer {revoked}"},  # revoked: identity says so
        {"Authorization": "Bearer cpk_" + "x" * 43},  # never made
        {"Authorization": "Bearer nope"},  # not one of ours
        {"Cookie": "cp_session=" + "s" * 43},  # a session that ended
    ]
    for path in PUBLIC_PAGES:
        plain = await gw.get(path, allow_redirects=False)
        for headers in stale:
            answer = await gw.get(path, headers=headers, allow_redirects=False)
            assert (answer.status, answer.content_type) == (plain.status, plain.content_type), (
                path,
                headers,
                await answer.text(),
            )
    served = await gw.get("/api/v1/openapi.json", headers=stale[0])
    assert await served.read() == COMMITTED.read_bytes()
    # Bytes that are no key at all (not UTF-8), as a hostile client sends them.
    status, _, body = await raw_request(
        gw.server, b"GET /api/v1/openapi.json HTTP/1.1\r\nAuthorization: Bearer cpk_\xff"
    )
    assert (status, body) == (200, COMMITTED.read_bytes())
    # Elsewhere under /api the stale key is still refused, not taken for no key.
    refused = await gw.get("/api/v1/portals", headers=stale[0])
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "invalid_api_key"


async def _admin(gw: TestClient, backend: Backend) -> dict[str, str]:
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return {"X-CSRF-Token": await csrf(gw)}


async def test_get_one_invitation_and_filter_the_list_by_email(
    gw: TestClient, backend: Backend
) -> None:
    portal = backend.add_portal("Acme", "active")
    backend.add_invitation("Ann@Example.com", portal)
    backend.add_invitation("bob@example.com", portal)
    # Without a session or key: refused, like the list.
    ann_id = next(i for i, inv in backend.invitations.items() if inv["email"].startswith("Ann"))
    assert (await gw.get(f"/api/v1/invitations/{ann_id}")).status == 401
    await _admin(gw, backend)
    one = await gw.get(f"/api/v1/invitations/{ann_id}")
    assert one.status == 200
    assert (await one.json())["email"] == "Ann@Example.com"
    missing = await gw.get(f"/api/v1/invitations/{uuid.uuid4()}")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "invitation_not_found"
    assert (await gw.get("/api/v1/invitations/not-an-id")).status == 404
    found = await (await gw.get("/api/v1/invitations?email=ann@example.COM")).json()
    assert [i["id"] for i in found["items"]] == [ann_id]
    too_long = await gw.get("/api/v1/invitations?email=" + "a" * 321)
    assert too_long.status == 422


async def test_the_api_key_reads_one_invitation(backend: Backend) -> None:
    portal = backend.add_portal("Acme", "active")
    backend.add_invitation("carol@example.com", portal)
    (inv_id,) = backend.invitations
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as client:
        headers = {"Authorization": "Bearer " + "k" * 40}
        response = await client.get(f"/api/v1/invitations/{inv_id}", headers=headers)
        assert response.status == 200
        assert (await response.json())["id"] == inv_id
        wrong = await client.get(
            f"/api/v1/invitations/{inv_id}", headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status == 401


async def test_a_service_that_is_away_answers_a_status_the_document_names(
    backend: Backend,
) -> None:
    # Every /api/v1 route asks a service behind the gateway (a key's check asks identity),
    # and while that service is away the answer is 503 (`unavailable`, `<service>_unavailable`): the
    # document named 503 on one operation of the 33, so a client generated from it met an
    # answer it was told could not come. Here the mailer is away (make_settings).
    app = create_app(make_settings(backend, gateway_api_key="k" * 40))
    async with TestClient(TestServer(app)) as client:
        headers = {"Authorization": "Bearer " + "k" * 40}
        response = await client.get("/api/v1/webhooks", headers=headers)
        assert response.status == 503
        assert (await response.json())["error"]["code"].endswith("unavailable")
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)
