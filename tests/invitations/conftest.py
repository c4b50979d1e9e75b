"""Fixtures for the invitations service: a fake of identity + portals following
docs/internal-api.md, a movable clock, and the real app on the run's database and broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.invitations.app import create_app
from services.invitations.settings import InvitationsSettings
from tests.support.env import TestEnv
from tests.support.mailjobs import jobs_of, opened

PUBLIC_URL = "https://clients.example.com"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@dataclass
class World:
    """What identity and portals know, as their internal APIs would answer it."""

    users: dict[str, str] = field(default_factory=dict)  # email lower -> user id
    access: dict[str, set[str]] = field(default_factory=dict)  # user id -> portal ids
    portals: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity_down: bool = False
    roles: dict[str, str] = field(default_factory=dict)  # user id -> role, if not client
    disabled: set[str] = field(default_factory=set)  # user ids

    def add_portal(self, status: str = "active", title: str | None = None) -> dict[str, Any]:
        portal_id = str(uuid.uuid4())
        portal: dict[str, Any] = {
            "id": portal_id,
            "title": title or f"Portal {portal_id[:8]}",
            "slug": f"portal-{portal_id[:8]}",
            "content": "",
            "content_html": "",
            "status": status,
            "client_id": None,
            "sub_client_ids": [],
            "revision": 1,
            "created_at": datetime.now(UTC).isoformat(),
            "updated_at": datetime.now(UTC).isoformat(),
        }
        self.portals[portal_id] = portal
        return portal

    def add_user(
        self, email: str, *portal_ids: str, role: str = "client", disabled: bool = False
    ) -> str:
        user_id = str(uuid.uuid4())
        self.users[email.lower()] = user_id
        self.access[user_id] = set(portal_ids)
        self.roles[user_id] = role
        if disabled:
            self.disabled.add(user_id)
        return user_id


def fake_services(world: World) -> web.Application:
    async def lookup(request: web.Request) -> web.Response:
        if world.identity_down:
            return _error(503, "unavailable", "down")
        user_id = world.users.get(request.query.get("email", "").lower())
        if user_id is None:
            return _error(404, "user_not_found", "No such user.")
        email = request.query["email"]
        return web.json_response(
            {
                "id": user_id,
                "email": email,
                "role": world.roles.get(user_id, "client"),
                "disabled": user_id in world.disabled,
                "created_at": datetime.now(UTC).isoformat(),
            }
        )

    async def lookup_many(request: web.Request) -> web.Response:
        if world.identity_down:
            return _error(503, "unavailable", "down")
        emails = (await request.json())["emails"]
        found = [
            {"id": world.users[e.lower()], "email": e} for e in emails if e.lower() in world.users
        ]
        return web.json_response({"items": found})

    async def user_portals(request: web.Request) -> web.Response:
        ids = world.access.get(request.match_info["user_id"], set())
        return web.json_response({"items": [world.portals[i] for i in ids if i in world.portals]})

    async def portal(request: web.Request) -> web.Response:
        found = world.portals.get(request.match_info["id"])
        if found is None:
            return _error(404, "portal_not_found", "No such portal.")
        # As the portals service answers: who has access (here all as sub-clients).
        people = sorted(u for u, ids in world.access.items() if found["id"] in ids)
        return web.json_response({**found, "sub_client_ids": people})

    async def by_slug(request: web.Request) -> web.Response:
        for found in world.portals.values():
            if found["slug"] == request.match_info["slug"]:
                return web.json_response(found)
        return _error(404, "portal_not_found", "No such portal.")

    app = web.Application()
    app.router.add_get("/users/lookup", lookup)
    app.router.add_post("/users/lookup", lookup_many)
    app.router.add_get("/users/{user_id}/portals", user_portals)
    app.router.add_get("/portals/by-slug/{slug}", by_slug)
    app.router.add_get("/portals/{id}", portal)
    return app


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
async def world() -> AsyncIterator[World]:
    yield World()


@pytest.fixture(scope="session")
async def fake_url(world: World) -> AsyncIterator[str]:
    server = TestServer(fake_services(world))
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_settings(env: TestEnv, fake_url: str, **extra: Any) -> InvitationsSettings:
    values: dict[str, Any] = {
        "database_url": env.database_url,
        "amqp_url": env.amqp_url_as("invitations"),
        "bus_prefix": env.bus_prefix,
        "identity_url": fake_url,
        "portals_url": fake_url,
        "public_url": PUBLIC_URL,
        "invitations_sweep_seconds": 3600,
        **env.keys.settings("invitations"),
    }
    values.update(extra)
    return InvitationsSettings(**values)


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def app_factory(
    migrated_schemas: TestEnv, fake_url: str, clock: Clock
) -> AsyncIterator[AppFactory]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(**extra: Any) -> TestClient[web.Request, web.Application]:
        app = create_app(make_settings(migrated_schemas, fake_url, **extra), clock=clock)
        proof = migrated_schemas.keys.client_middleware("gateway", "invitations")
        client = TestClient(TestServer(app), middlewares=(proof,))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def client(app_factory: AppFactory) -> TestClient[web.Request, web.Application]:
    return await app_factory()


@pytest.fixture
async def pool(pool_factory: Callable[[str], Awaitable[asyncpg.Pool]]) -> asyncpg.Pool:
    return await pool_factory("invitations")


async def outbox_events(pool: asyncpg.Pool, invitation_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, envelope) of every event written about one invitation, oldest first."""
    rows = await pool.fetch(
        "SELECT routing_key, body FROM outbox"
        " WHERE convert_from(body, 'UTF8') LIKE '%' || $1 || '%' ORDER BY seq",
        invitation_id,
    )
    # A batch's mail jobs travel together (mail.requested version 2): this one's job.
    return [
        (row["routing_key"], job)
        for row in rows
        for job in jobs_of(opened(orjson.loads(row["body"])), invitation_id)
    ]


async def last_token(pool: asyncpg.Pool, invitation_id: str) -> str:
    """The token from the newest mail job: the link the person would click."""
    mails = [e for t, e in await outbox_events(pool, invitation_id) if t == "mail.requested"]
    url = mails[-1]["data"]["context"]["accept_url"]
    return str(url.split("token=", 1)[1])


def first_write(portal_id: uuid.UUID, email: str, now: datetime) -> tuple[Any, Any, None]:
    """A first invitation as ``repository.insert_firsts`` takes it (row, its
    ``invitation.created``, no trace), written straight to the database."""
    from libs.common.events import InvitationCreated
    from services.invitations import repository as repo
    from services.invitations.handlers.base import envelope

    row = repo.NewInvitation(
        invitation_id=uuid.uuid4(),
        email=email,
        email_lower=email.lower(),
        portal_id=portal_id,
        token_hash=uuid.uuid4().hex,
        sent_at=now,
        expires_at=now + timedelta(days=7),
        mail_id=uuid.uuid4(),
        sub_client=None,
        invited_by=None,
        idempotency_key=None,
    )
    created = InvitationCreated(
        invitation_id=row.invitation_id,
        portal_id=row.portal_id,
        email=row.email,
        expires_at=row.expires_at,
    )
    return (row, [envelope("invitation.created", created)], None)


def only_first_looks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record the arguments of each ``repository.first_look`` (key, portal id, slug), and
    fail any other read of the portal or the expiry setting: they were in the look."""
    from services.invitations import repository as repo

    looks: list[tuple[Any, ...]] = []
    real = repo.first_look

    async def first_look(db: Any, *args: Any) -> Any:
        looks.append(args)
        return await real(db, *args)

    async def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("read again after the first look")

    monkeypatch.setattr(repo, "first_look", first_look)
    for name in ("get_portal", "get_portal_by_slug", "expiry_days"):
        monkeypatch.setattr(repo, name, never)
    return looks


RequestedHandler = Callable[[Any, Any, Any], Awaitable[None]]


def requested_handler(client: TestClient) -> RequestedHandler:
    """invitation.requested's handler as the consumer binds it (``in_inbox``), given one
    event at a time: ``await handler(conn, envelope, data)`` in the caller's transaction."""
    from libs.common.bus import Together, in_inbox
    from services.invitations.api import DEPS
    from services.invitations.consumer import HANDLERS

    bound = in_inbox(lambda: client.app[DEPS], HANDLERS)["invitation.requested"]
    assert isinstance(bound, Together)

    async def handle(conn: Any, envelope: Any, data: Any) -> None:
        await bound.apply(conn, [(envelope, data)])

    return handle
