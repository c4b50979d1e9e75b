"""The admin screens with an agency's amount of data: a screen asks the services a fixed
number of times, however many rows it shows (the calls are counted in the services' own
request logs by the page's correlation id)."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import asyncpg
import pytest

from tests.e2e.conftest import Api, Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SUB_CLIENTS = 120


def calls_made(stack: Stack, correlation_id: str) -> Counter[str]:
    """How many requests each service (but the gateway) answered for one page."""
    counts: Counter[str] = Counter()
    for name, service in stack.services.items():
        if name == "gateway":
            continue
        for line in service.log_path.read_text(errors="replace").splitlines():
            if correlation_id not in line or '"event":"http_request"' not in line:
                continue
            if json.loads(line).get("correlation_id") == correlation_id:
                counts[name] += 1
    return counts


async def page_calls(stack: Stack, admin: Browser, path: str) -> tuple[str, Counter[str]]:
    """GET ``path`` as ``admin`` under a correlation id of its own; the page and the
    calls it made."""
    correlation_id = uuid.uuid4().hex
    headers = {"X-Correlation-ID": correlation_id}
    async with admin.session.get(admin.base + path, headers=headers) as response:
        assert response.status == 200, await response.text()
        html = await response.text()
    return html, calls_made(stack, correlation_id)


async def clients(stack: Stack, tag: str, count: int) -> list[str]:
    """``count`` client accounts (scale-<tag>-<n>@example.com), made in one statement and
    listed after every other user (the editor's Client field lists the first 200); their
    ids, in that order."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO identity.users (id, email, role, password_hash, created_at)"
            " SELECT gen_random_uuid(), 'scale-' || $1 || '-' || n || '@example.com', 'client',"
            " 'not-a-hash', now() + interval '50 years' + n * interval '1 second'"
            " FROM generate_series(1, $2::int) AS n RETURNING id",
            tag,
            count,
        )
    finally:
        await conn.close()
    return [str(r["id"]) for r in rows]


async def test_the_portal_editor_asks_identity_once_for_many_sub_clients(
    stack: Stack, admin: Browser, api: Api
) -> None:
    tag = uuid.uuid4().hex[:8]
    # 200 more than the portal takes: its client and sub-clients are past the first 200.
    users = await clients(stack, tag, 200 + SUB_CLIENTS + 1)
    portal = await api.portal(f"Scale {tag}")
    code, body = await api.call("PUT", f"/portals/{portal['id']}/client", {"user_id": users[200]})
    assert code == 200, body
    code, body = await api.call(
        "PUT", f"/portals/{portal['id']}/sub-clients", {"user_ids": users[201:]}
    )
    assert code == 200, body

    html, calls = await page_calls(stack, admin, f"/admin/portals/{portal['id']}")

    for n in range(201, 200 + SUB_CLIENTS + 2):
        assert f"scale-{tag}-{n}@example.com" in html
    # The first 200 users for the Client field, the settings, and the emails of the
    # client and sub-clients not among them in one request: not one request a sub-client.
    assert calls["identity"] <= 3, calls


async def test_setting_many_sub_clients_through_the_api_checks_them_in_one_request(
    stack: Stack, api: Api
) -> None:
    tag = uuid.uuid4().hex[:8]
    users = await clients(stack, tag, SUB_CLIENTS)
    portal = await api.portal(f"Scale {tag}")
    correlation_id = uuid.uuid4().hex
    async with api.session.put(
        f"{api.base}/portals/{portal['id']}/sub-clients",
        json={"user_ids": users},
        headers={"X-Correlation-ID": correlation_id},
    ) as response:
        assert response.status == 200, await response.text()
    assert calls_made(stack, correlation_id)["identity"] <= 2

    # An id that is no one's is still refused, naming the rule.
    async with api.session.put(
        f"{api.base}/portals/{portal['id']}/sub-clients",
        json={"user_ids": [*users[:5], str(uuid.uuid4())]},
    ) as response:
        assert response.status == 422
        assert (await response.json())["error"]["code"] == "user_not_found"


async def test_all_portals_asks_identity_once_for_a_page_of_clients(
    stack: Stack, admin: Browser, api: Api
) -> None:
    tag = uuid.uuid4().hex[:8]
    users = await clients(stack, tag, 10)
    for n, user in enumerate(users):
        portal = await api.portal(f"Scale {tag} {n}")
        code, body = await api.call("PUT", f"/portals/{portal['id']}/client", {"user_id": user})
        assert code == 200, body

    html, calls = await page_calls(stack, admin, "/admin/portals")

    for n in range(1, 11):
        assert f"scale-{tag}-{n}@example.com" in html
    assert calls["identity"] <= 1, calls


async def test_the_users_screen_asks_portals_once_for_a_page_of_users(
    stack: Stack, admin: Browser, api: Api
) -> None:
    tag = uuid.uuid4().hex[:8]
    users = await clients(stack, tag, 12)
    portal = await api.portal(f"Scale {tag}")
    code, body = await api.call("PUT", f"/portals/{portal['id']}/sub-clients", {"user_ids": users})
    assert code == 200, body

    html, calls = await page_calls(stack, admin, f"/admin/users?q=scale-{tag}")

    for n in range(1, 13):
        assert f"scale-{tag}-{n}@example.com" in html
    assert html.count(f">Scale {tag}</a>") == 12, "each user's portal in their row"
    assert calls["portals"] <= 1, calls


async def test_the_webhooks_screen_asks_the_mailer_once_for_every_endpoint_log(
    stack: Stack, admin: Browser, api: Api
) -> None:
    tag = uuid.uuid4().hex[:8]
    try:
        await _six_endpoints_listed_in_one_call(stack, admin, tag)
    finally:
        # Nothing listens at these URLs: left behind, each later invitation.created of
        # the run would be retried to them, the webhook tests' deliveries queued behind.
        code, endpoints = await api.call("GET", "/webhooks")
        assert code == 200, endpoints
        for endpoint in endpoints["items"]:
            if tag in endpoint["url"]:
                async with api.session.delete(f"{api.base}/webhooks/{endpoint['id']}") as gone:
                    assert gone.status == 204, await gone.text()


async def _six_endpoints_listed_in_one_call(stack: Stack, admin: Browser, tag: str) -> None:
    for n in range(6):
        code, url, html = await admin.get("/admin/settings/webhooks")
        code, url, html = await admin.submit(
            url,
            html,
            "Add Endpoint",
            {"URL": f"http://127.0.0.1:9/{tag}-{n}"},
            extra={"events": "invitation.created"},
        )
        assert code == 200, html[-2000:]

    html, calls = await page_calls(stack, admin, "/admin/settings/webhooks")

    for n in range(6):
        assert f"http://127.0.0.1:9/{tag}-{n}" in html
    # The endpoints with their delivery logs, and perhaps the branding: not one a log.
    assert calls["mailer"] <= 2, calls


async def test_a_portal_past_the_newest_200_stays_chosen_in_the_filters(
    stack: Stack, admin: Browser
) -> None:
    """The Portal filter lists the newest 200 portals; filtering by an older one (a link,
    or a bookmark) showed 'All portals' while listing only that portal's rows."""
    tag = uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "INSERT INTO portals.portals (id, title, slug, status, created_at)"
            " SELECT gen_random_uuid(), 'Old ' || $1 || ' ' || n, 'old-' || $1 || '-' || n,"
            " 'active', now() - interval '5 years' + n * interval '1 second'"
            " FROM generate_series(1, 201) AS n",
            tag,
        )
        oldest = await conn.fetchval(
            "SELECT id FROM portals.portals WHERE slug = $1", f"old-{tag}-1"
        )
    finally:
        await conn.close()

    for path in ("/admin/invitations", "/admin/activity"):
        code, _, html = await admin.get(f"{path}?portal_id={oldest}")
        assert code == 200
        assert f'<option value="{oldest}" selected>Old {tag} 1</option>' in html, path
