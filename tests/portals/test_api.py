"""The portals HTTP API on the real database (docs/internal-api.md "portals")."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.portals.api import CALLERS
from tests.portals.conftest import outbox_events

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
NewPortal = Callable[..., Awaitable[dict[str, Any]]]


async def test_create_portal_generates_slug_renders_content_and_writes_event(
    client: Client, db: asyncpg.Pool
) -> None:
    resp = await client.post(
        "/portals",
        json={"title": "  Café Déjà Vu  ", "content": "# Hi\n\n<script>x()</script>"},
    )
    assert resp.status == 201
    portal = await resp.json()
    assert portal["title"] == "Café Déjà Vu"
    assert portal["slug"].startswith("cafe-deja-vu")
    assert portal["status"] == "pending"
    assert portal["revision"] == 1
    assert portal["client_id"] is None and portal["sub_client_ids"] == []
    assert "<h1>Hi</h1>" in portal["content_html"]
    assert "<script" not in portal["content_html"]
    uuid.UUID(portal["id"])
    events = await outbox_events(db, portal["id"])
    assert events == [
        (
            "portal.created",
            {
                "portal_id": portal["id"],
                "slug": portal["slug"],
                "title": "Café Déjà Vu",
                "status": "pending",
                "revision": 1,
            },
        )
    ]


async def test_generated_slugs_get_a_number_on_collision(client: Client) -> None:
    title = f"Same Title {uuid.uuid4().hex[:6]}"
    slugs = []
    for _ in range(3):
        resp = await client.post("/portals", json={"title": title})
        slugs.append((await resp.json())["slug"])
    base = slugs[0]
    assert slugs == [base, f"{base}-2", f"{base}-3"]


async def test_concurrent_creates_with_the_same_title_get_distinct_slugs(client: Client) -> None:
    title = f"Rush {uuid.uuid4().hex[:6]}"
    responses = await asyncio.gather(
        *(client.post("/portals", json={"title": title}) for _ in range(16))
    )
    assert [r.status for r in responses] == [201] * 16
    slugs = {(await r.json())["slug"] for r in responses}
    assert len(slugs) == 16


async def test_explicit_duplicate_slug_is_409(client: Client, new_portal: NewPortal) -> None:
    first = await new_portal()
    resp = await client.post("/portals", json={"title": "Other", "slug": first["slug"]})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "slug_taken"


async def test_concurrent_creates_of_one_explicit_slug_one_wins(client: Client) -> None:
    slug = f"only-{uuid.uuid4().hex[:8]}"
    responses = await asyncio.gather(
        *(client.post("/portals", json={"title": "Race", "slug": slug}) for _ in range(16))
    )
    assert sorted(r.status for r in responses) == [201] + [409] * 15


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 201},
        {"title": "ok", "slug": "Bad Slug"},
        {"title": "ok", "slug": "a--b"},
        {"title": "ok", "slug": "a" * 81},
        {"title": "ok", "status": "published"},
        {"title": "ok", "content": "x" * 100_001},
        {"title": "ok", "extra": 1},
        {"title": None},
    ],
)
async def test_create_rejects_bad_input(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post("/portals", json=body)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_input" and error["message"]


async def test_create_accepts_max_sizes(client: Client) -> None:
    resp = await client.post(
        "/portals", json={"title": "é" * 200, "content": "ü" * 100_000, "slug": None}
    )
    assert resp.status == 201


async def test_get_by_id_and_slug(client: Client, new_portal: NewPortal) -> None:
    portal = await new_portal(content="hello")
    by_id = await client.get(f"/portals/{portal['id']}")
    by_slug = await client.get(f"/portals/by-slug/{portal['slug']}")
    assert await by_id.json() == portal
    assert await by_slug.json() == portal
    for path in (f"/portals/{uuid.uuid4()}", "/portals/not-a-uuid", "/portals/by-slug/nope-x"):
        resp = await client.get(path)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "portal_not_found"


async def test_a_slug_no_portal_can_have_names_none(client: Client, new_portal: NewPortal) -> None:
    # Found by fuzzing the internal API: a NUL in a slug reached PostgreSQL, which can't
    # take one in text, and the answer was a 500 (on both routes that take a slug).
    portal = await new_portal()
    user = uuid.uuid4()
    await client.put(f"/portals/{portal['id']}/client", json={"user_id": str(user)})
    assert (await client.get(f"/users/{user}/portals/{portal['slug']}")).status == 200
    for slug in ("a%00b", "%00", portal["slug"] + "%00", "Upper-Case", "x" * 81):
        for path in (f"/portals/by-slug/{slug}", f"/users/{user}/portals/{slug}"):
            resp = await client.get(path)
            assert resp.status == 404, (path, await resp.text())
            assert (await resp.json())["error"]["code"] == "portal_not_found"


async def test_patch_bumps_revision_and_publishes_update(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal(status="pending")
    new_slug = f"renamed-{uuid.uuid4().hex[:6]}"
    resp = await client.patch(
        f"/portals/{portal['id']}",
        json={"title": "Renamed", "slug": new_slug, "content": "*hi*", "status": "active"},
    )
    assert resp.status == 200
    updated = await resp.json()
    assert updated["title"] == "Renamed" and updated["slug"] == new_slug
    assert updated["status"] == "active" and updated["revision"] == 2
    assert updated["content_html"] == "<p><em>hi</em></p>\n"
    assert updated["updated_at"] >= portal["updated_at"]
    # Nothing different: no new revision, no event.
    same = await (await client.patch(f"/portals/{portal['id']}", json={"title": "Renamed"})).json()
    assert same["revision"] == 2
    events = [t for t, _ in await outbox_events(db, portal["id"])]
    assert events == ["portal.created", "portal.updated"]


async def test_patch_errors(client: Client, new_portal: NewPortal) -> None:
    a, b = await new_portal(), await new_portal()
    resp = await client.patch(f"/portals/{a['id']}", json={"slug": b["slug"]})
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "slug_taken"
    resp = await client.patch(f"/portals/{a['id']}", json={"title": None})
    assert resp.status == 422
    resp = await client.patch(f"/portals/{a['id']}", json={"status": "gone"})
    assert resp.status == 422
    resp = await client.patch(f"/portals/{uuid.uuid4()}", json={"title": "x"})
    assert resp.status == 404
    resp = await client.patch(f"/portals/{a['id']}", data=b"not json")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"


async def test_concurrent_patches_each_bump_the_revision(
    client: Client, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    responses = await asyncio.gather(
        *(client.patch(f"/portals/{portal['id']}", json={"title": f"T{i}"}) for i in range(16))
    )
    assert {r.status for r in responses} == {200}
    revisions = sorted([(await r.json())["revision"] for r in responses])
    assert revisions == list(range(2, 18))


async def test_a_write_at_a_revision_wins_once_and_the_rest_are_told_the_new_one(
    client: Client, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    path = f"/portals/{portal['id']}"
    responses = await asyncio.gather(
        *(client.patch(path, json={"title": f"T{i}", "revision": 1}) for i in range(16))
    )
    assert sorted(r.status for r in responses) == [200] + [409] * 15
    for response in responses:
        if response.status == 409:
            error = (await response.json())["error"]
            assert (error["code"], error["revision"]) == ("portal_changed", 2)
    now = await (await client.get(path)).json()
    assert now["revision"] == 2
    # Nothing to change, yet a stale revision is still refused; the current one is fine.
    resp = await client.patch(path, json={"title": now["title"], "revision": 1})
    assert resp.status == 409
    resp = await client.patch(path, json={"content": "new", "revision": 2})
    assert resp.status == 200 and (await resp.json())["revision"] == 3
    for bad in (0, None, "two"):
        resp = await client.patch(path, json={"title": "x", "revision": bad})
        assert resp.status == 422, bad


# 100 KB that markdown-it-py takes seconds to render: an unclosed image on every line
# (its label search runs to the end of the paragraph each time, so the cost is quadratic).
SLOW_CONTENT = "![a\n" * 25_000


async def test_content_slow_to_render_holds_up_neither_the_service_nor_the_portal(
    client: Client, new_portal: NewPortal
) -> None:
    """Rendering ran on the event loop, inside the transaction holding the portal's row
    lock: while one save of crafted Content rendered (seconds), the service answered no
    one and another save to that portal waited on the lock."""
    portal, other = await new_portal(), await new_portal()
    path = f"/portals/{portal['id']}"
    save = asyncio.create_task(client.patch(path, json={"content": SLOW_CONTENT}))
    await asyncio.sleep(0.3)  # the save is rendering by now
    read = await client.get(f"/portals/{other['id']}")
    renamed = await client.patch(path, json={"title": "Renamed meanwhile"})
    assert read.status == 200 and renamed.status == 200
    assert not save.done(), "answered only once the render was over"
    saved = await save
    assert saved.status == 200
    body = await saved.json()
    assert body["title"] == "Renamed meanwhile" and body["content"] == SLOW_CONTENT


async def test_list_filters_and_keyset_pagination(client: Client, new_portal: NewPortal) -> None:
    tag = uuid.uuid4().hex[:8]
    made = [await new_portal(title=f"List {tag} {i} 100%_x") for i in range(5)]
    await new_portal(title=f"List {tag} archived", status="archived")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"q": tag.upper(), "status": "active", "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        resp = await client.get("/portals", params=params)
        assert resp.status == 200
        page = await resp.json()
        seen += [p["id"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [p["id"] for p in reversed(made)]  # newest first, no gaps or repeats
    # LIKE wildcards in q are literal.
    resp = await client.get("/portals", params={"q": "100%_x"})
    assert len((await resp.json())["items"]) >= 5
    resp = await client.get("/portals", params={"q": f"{tag}%"})
    assert (await resp.json())["items"] == []
    # Empty filters (an "All" choice in a form) mean no filter.
    resp = await client.get("/portals", params={"q": "", "status": "", "cursor": ""})
    assert resp.status == 200


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"status": "x"}, {"cursor": "garbage!"}],
)
async def test_list_rejects_bad_query(client: Client, params: dict[str, str]) -> None:
    resp = await client.get("/portals", params=params)
    assert resp.status == 422


async def test_set_client_and_sub_clients(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    pid = portal["id"]
    alice, bob, carol = (str(uuid.uuid4()) for _ in range(3))

    resp = await client.put(f"/portals/{pid}/client", json={"user_id": alice})
    assert (await resp.json())["client_id"] == alice
    resp = await client.put(f"/portals/{pid}/sub-clients", json={"user_ids": [bob, carol, bob]})
    body = await resp.json()
    assert resp.status == 200 and sorted(body["sub_client_ids"]) == sorted([bob, carol])

    # The client can't also be a sub-client.
    resp = await client.put(f"/portals/{pid}/sub-clients", json={"user_ids": [alice]})
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "user_is_client"

    # Promoting a sub-client: it stops being a sub-client; the old client loses access.
    resp = await client.put(f"/portals/{pid}/client", json={"user_id": bob})
    body = await resp.json()
    assert body["client_id"] == bob and body["sub_client_ids"] == [carol]
    resp = await client.put(f"/portals/{pid}/sub-clients", json={"user_ids": []})
    assert (await resp.json())["sub_client_ids"] == []
    resp = await client.put(f"/portals/{pid}/client", json={"user_id": None})
    assert (await resp.json())["client_id"] is None

    events = [
        (t, d["user_id"], d["role"]) for t, d in await outbox_events(db, pid) if "user_id" in d
    ]
    # One transaction's events share a created_at, so compare them as a multiset.
    assert sorted(events) == sorted(
        [
            ("portal.access.granted", alice, "client"),
            ("portal.access.granted", bob, "sub_client"),
            ("portal.access.granted", carol, "sub_client"),
            ("portal.access.revoked", alice, "client"),
            ("portal.access.granted", bob, "client"),
            ("portal.access.revoked", carol, "sub_client"),
            ("portal.access.revoked", bob, "client"),
        ]
    )
    for path, body_ in (
        (f"/portals/{uuid.uuid4()}/client", {"user_id": None}),
        (f"/portals/{uuid.uuid4()}/sub-clients", {"user_ids": []}),
    ):
        assert (await client.put(path, json=body_)).status == 404
    bad = await client.put(f"/portals/{pid}/sub-clients", json={"user_ids": ["nope"]})
    assert bad.status == 422


async def test_grant_access_auto_role_and_idempotency(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    pid = portal["id"]
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    key1, key2 = str(uuid.uuid4()), str(uuid.uuid4())

    resp = await client.post(f"/portals/{pid}/access", json={"user_id": first, "grant_key": key1})
    body = await resp.json()
    assert resp.status == 200 and body["role"] == "client"
    assert body["portal"]["client_id"] == first

    again = await client.post(
        f"/portals/{pid}/access", json={"user_id": first, "role": None, "grant_key": key1}
    )
    assert (await again.json())["role"] == "client"

    # An explicit client request while someone is client → sub-client (still gets in).
    resp = await client.post(
        f"/portals/{pid}/access", json={"user_id": second, "role": "client", "grant_key": key2}
    )
    body = await resp.json()
    assert body["role"] == "sub_client" and body["portal"]["sub_client_ids"] == [second]

    # The same key for another user is refused.
    resp = await client.post(
        f"/portals/{pid}/access", json={"user_id": str(uuid.uuid4()), "grant_key": key1}
    )
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "grant_key_conflict"

    granted = [t for t, d in await outbox_events(db, pid) if t == "portal.access.granted"]
    assert len(granted) == 2

    resp = await client.post(f"/portals/{uuid.uuid4()}/access", json={"user_id": first})
    assert resp.status == 404
    resp = await client.post(f"/portals/{pid}/access", json={"user_id": first, "role": "owner"})
    assert resp.status == 422


async def test_concurrent_grants_make_exactly_one_client(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    users = [str(uuid.uuid4()) for _ in range(16)]
    responses = await asyncio.gather(
        *(
            client.post(
                f"/portals/{portal['id']}/access",
                json={"user_id": u, "role": None, "grant_key": str(uuid.uuid4())},
            )
            for u in users
        )
    )
    assert {r.status for r in responses} == {200}
    roles = [(await r.json())["role"] for r in responses]
    assert roles.count("client") == 1 and roles.count("sub_client") == 15
    rows = await db.fetch(
        "SELECT role, count(*) AS n FROM access WHERE portal_id = $1 GROUP BY role",
        uuid.UUID(portal["id"]),
    )
    assert {r["role"]: r["n"] for r in rows} == {"client": 1, "sub_client": 15}


async def test_concurrent_retries_of_one_grant_key_apply_once(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    user, key = str(uuid.uuid4()), str(uuid.uuid4())
    responses = await asyncio.gather(
        *(
            client.post(f"/portals/{portal['id']}/access", json={"user_id": user, "grant_key": key})
            for _ in range(16)
        )
    )
    assert {r.status for r in responses} == {200}
    assert {(await r.json())["role"] for r in responses} == {"client"}
    granted = [t for t, _ in await outbox_events(db, portal["id"]) if t.endswith("granted")]
    assert granted == ["portal.access.granted"]


async def test_user_portals_and_content_visibility(client: Client, new_portal: NewPortal) -> None:
    user = str(uuid.uuid4())
    active = await new_portal(title="B active", content="**secret plan**")
    pending = await new_portal(title="A pending", content="draft", status="pending")
    other = await new_portal(title="C other")
    for p in (active, pending):
        await client.post(f"/portals/{p['id']}/access", json={"user_id": user})

    resp = await client.get(f"/users/{user}/portals")
    items = (await resp.json())["items"]
    assert [i["id"] for i in items] == [pending["id"], active["id"]]
    assert all("content" not in i and "content_html" not in i for i in items)
    assert {i["role"] for i in items} == {"client"}

    resp = await client.get(f"/users/{user}/portals/{active['slug']}")
    body = await resp.json()
    assert resp.status == 200 and body["content"] == "**secret plan**"
    assert body["content_html"] == "<p><strong>secret plan</strong></p>\n"

    resp = await client.get(f"/users/{user}/portals/{pending['slug']}")
    body = await resp.json()
    assert body["status"] == "pending" and body["content"] is None and body["content_html"] is None

    for slug in (other["slug"], "no-such-portal"):
        resp = await client.get(f"/users/{user}/portals/{slug}")
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "portal_not_found"
    assert (await (await client.get(f"/users/{uuid.uuid4()}/portals")).json()) == {"items": []}
    assert (await client.get("/users/nope/portals")).status == 422

    # A page of users in one request: each user's portals as its own list gives them.
    nobody = str(uuid.uuid4())
    resp = await client.post("/users/portals", json={"user_ids": [user, nobody]})
    assert (await resp.json())["items"] == [
        {"user_id": user, "portals": items},
        {"user_id": nobody, "portals": []},
    ]
    too_many = [str(uuid.uuid4()) for _ in range(201)]
    assert (await client.post("/users/portals", json={"user_ids": too_many})).status == 422


async def test_concurrent_client_changes_leave_exactly_one_client(
    client: Client, db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    users = [str(uuid.uuid4()) for _ in range(16)]
    responses = await asyncio.gather(
        *(client.put(f"/portals/{portal['id']}/client", json={"user_id": u}) for u in users)
    )
    assert {r.status for r in responses} == {200}
    rows = await db.fetch(
        "SELECT user_id, role FROM access WHERE portal_id = $1", uuid.UUID(portal["id"])
    )
    assert len(rows) == 1 and rows[0]["role"] == "client"


async def test_the_schema_itself_refuses_a_second_client(
    db: asyncpg.Pool, new_portal: NewPortal
) -> None:
    portal = uuid.UUID((await new_portal())["id"])
    await db.execute(
        "INSERT INTO access (portal_id, user_id, role) VALUES ($1, $2, 'client')",
        portal,
        uuid.uuid4(),
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO access (portal_id, user_id, role) VALUES ($1, $2, 'client')",
            portal,
            uuid.uuid4(),
        )


async def test_openapi_document(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    routes = {
        f"{method.upper()} {path}"
        for path, methods in document["paths"].items()
        for method in methods
    }
    # Every route of the service is described (the description itself aside).
    assert routes == set(CALLERS) - {"GET /openapi.json"}
    create = document["paths"]["/portals"]["post"]["requestBody"]["content"]
    assert set(create["application/json"]["schema"]["properties"]) == {
        "title",
        "slug",
        "content",
        "status",
    }


@pytest.mark.parametrize(
    "when",
    # Dates Python reads and PostgreSQL can't hold: a day past its range once in UTC.
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"],
)
async def test_a_forged_cursor_out_of_the_databases_range_is_invalid(
    client: Client, when: str
) -> None:
    """A cursor is opaque but not sealed: one a caller wrote with a date PostgreSQL
    can't hold is refused as invalid_cursor, not a 500."""
    raw = f"portals|{when}|{uuid.uuid4()}"
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    resp = await client.get("/portals", params={"cursor": cursor})
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_cursor"
