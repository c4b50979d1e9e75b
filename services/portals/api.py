"""HTTP views (docs/internal-api.md "portals"): parse with pydantic, call a handler, answer JSON."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from libs.common.cursor import Cursor, decode_cursor, encode_cursor
from libs.common.errors import InvalidInput, NotFound
from libs.common.service_auth import GATEWAY
from libs.common.web import Route, callers_of, json_response, parse_query, path_uuid, read_json

from . import handlers
from .domain import (
    CONTENT_MAX,
    SLUG_MAX,
    SLUG_PATTERN,
    TITLE_MAX,
    Portal,
    Role,
    Status,
    clean_title,
    is_valid_slug,
)

DEPS = web.AppKey("portals_deps", handlers.Deps)

# One line that shows what it holds (libs/common/text.py), cleaned before its length counts.
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX),
    BeforeValidator(clean_title),
]
Slug = Annotated[str, StringConstraints(max_length=SLUG_MAX, pattern=SLUG_PATTERN)]
Content = Annotated[str, Field(max_length=CONTENT_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreatePortal(_Body):
    title: Title
    slug: Slug | None = None
    content: Content = ""
    # New portals wait as Pending until an admin makes them Active (no content leaks early).
    status: Status = "pending"


class PatchPortal(_Body):
    title: Title | None = None
    slug: Slug | None = None
    content: Content | None = None
    status: Status | None = None
    # Change it only if it is still at this revision (read, change, write back safely).
    revision: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> PatchPortal:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} can't be null; leave it out to keep it")
        return self


class ListQuery(_Body):
    status: Status | None = None
    q: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Cursor | None = None

    @field_validator("status", "q", "cursor", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class SetClient(_Body):
    user_id: uuid.UUID | None


class SetSubClients(_Body):
    user_ids: list[uuid.UUID] = Field(max_length=1000)


class UsersPortalsBody(_Body):
    # A page of the Users screen is 50; an API caller's page at most 200.
    user_ids: list[uuid.UUID] = Field(max_length=200)


class GrantAccess(_Body):
    user_id: uuid.UUID
    role: Role | None = None
    grant_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    # The key the invitation behind this grant was made under (for portal.access.granted).
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    # When the invitation behind this grant was accepted (invitations' clock): one accepted
    # before the account's latest Enable is refused, as its invitation.accepted would be.
    accepted_at: AwareDatetime | None = None


ContentMode = Literal["full", "omit", "hidden"]


def portal_json(portal: Portal, content: ContentMode = "full") -> dict[str, Any]:
    """``omit`` leaves the content keys out (lists); ``hidden`` nulls them (not active)."""
    data: dict[str, Any] = {
        # str(): asyncpg's UUID type is not one orjson serialises.
        "id": str(portal.id),
        "title": portal.title,
        "slug": portal.slug,
        "content": portal.content,
        "content_html": portal.content_html,
        "status": portal.status,
        "client_id": str(portal.client_id) if portal.client_id else None,
        "sub_client_ids": [str(u) for u in portal.sub_client_ids],
        "revision": portal.revision,
        "created_at": portal.created_at,
        "updated_at": portal.updated_at,
    }
    if content == "omit":
        del data["content"], data["content_html"]
    elif content == "hidden":
        data["content"] = data["content_html"] = None
    return data


def _portal_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "portal_id", NotFound("Not found.", code="portal_not_found"))


def _slug(request: web.Request) -> str:
    """The path's slug. Anything a slug can't be (the table's CHECK holds every stored one
    to the pattern) names no portal: 404, never a value PostgreSQL refuses (a NUL)."""
    slug = request.match_info["slug"]
    if not is_valid_slug(slug):
        raise NotFound("Not found.", code="portal_not_found")
    return slug


def _user_id(request: web.Request) -> uuid.UUID:
    not_a_user_id = InvalidInput("The user id must be a UUID.", code="invalid_user_id")
    return path_uuid(request, "user_id", not_a_user_id)


async def create_portal(request: web.Request) -> web.Response:
    body = await read_json(request, CreatePortal)
    portal = await handlers.create_portal(
        request.app[DEPS],
        title=body.title,
        slug=body.slug,
        content=body.content,
        status=body.status,
    )
    return json_response(portal_json(portal), status=201)


async def list_portals(request: web.Request) -> web.Response:
    query = parse_query(request, ListQuery)
    after = decode_cursor("portals", query.cursor) if query.cursor else None
    items, more = await handlers.list_portals(
        request.app[DEPS], status=query.status, q=query.q, limit=query.limit, after=after
    )
    next_cursor = encode_cursor("portals", items[-1].created_at, items[-1].id) if more else None
    return json_response({"items": [portal_json(p) for p in items], "next_cursor": next_cursor})


async def get_portal(request: web.Request) -> web.Response:
    portal = await handlers.get_portal(request.app[DEPS], _portal_id(request))
    return json_response(portal_json(portal))


async def get_portal_by_slug(request: web.Request) -> web.Response:
    portal = await handlers.get_portal_by_slug(request.app[DEPS], _slug(request))
    return json_response(portal_json(portal))


async def patch_portal(request: web.Request) -> web.Response:
    portal_id = _portal_id(request)
    body = await read_json(request, PatchPortal)
    changes = body.model_dump(include=body.model_fields_set - {"revision"})
    portal = await handlers.update_portal(
        request.app[DEPS], portal_id, changes, revision=body.revision
    )
    return json_response(portal_json(portal))


async def put_client(request: web.Request) -> web.Response:
    portal_id = _portal_id(request)
    body = await read_json(request, SetClient)
    portal = await handlers.set_client(request.app[DEPS], portal_id, body.user_id)
    return json_response(portal_json(portal))


async def put_sub_clients(request: web.Request) -> web.Response:
    portal_id = _portal_id(request)
    body = await read_json(request, SetSubClients)
    portal = await handlers.set_sub_clients(request.app[DEPS], portal_id, body.user_ids)
    return json_response(portal_json(portal))


async def post_access(request: web.Request) -> web.Response:
    portal_id = _portal_id(request)
    body = await read_json(request, GrantAccess)
    portal, role = await handlers.grant_access(
        request.app[DEPS],
        portal_id,
        body.user_id,
        body.role,
        body.grant_key,
        body.idempotency_key,
        accepted_at=body.accepted_at,
    )
    return json_response({"portal": portal_json(portal), "role": role})


async def list_user_portals(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    found = await handlers.user_portals(request.app[DEPS], user_id)
    items = [{**portal_json(p, "omit"), "role": role} for p, role in found]
    return json_response({"items": items})


async def list_users_portals(request: web.Request) -> web.Response:
    body = await read_json(request, UsersPortalsBody)
    found = await handlers.users_portals(request.app[DEPS], body.user_ids)
    items = [
        {
            "user_id": str(user_id),
            "portals": [{**portal_json(p, "omit"), "role": role} for p, role in portals],
        }
        for user_id, portals in found.items()
    ]
    return json_response({"items": items})


async def get_user_portal(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    portal, role = await handlers.user_portal(request.app[DEPS], user_id, _slug(request))
    mode: ContentMode = "full" if portal.status == "active" else "hidden"
    return json_response({**portal_json(portal, mode), "role": role})


GATEWAY_AND_INVITATIONS = frozenset({"gateway", "invitations"})
# Who may call each route (libs/common/web.py require_service_proof; docs/internal-api.md
# "Who may call what"): invitations reads portals and a user's portals, nothing else.
ROUTES = (
    Route("POST", "/portals", create_portal, GATEWAY),
    Route("GET", "/portals", list_portals, GATEWAY),
    Route("GET", "/portals/by-slug/{slug}", get_portal_by_slug, GATEWAY_AND_INVITATIONS),
    Route("GET", "/portals/{portal_id}", get_portal, GATEWAY_AND_INVITATIONS),
    Route("PATCH", "/portals/{portal_id}", patch_portal, GATEWAY),
    Route("PUT", "/portals/{portal_id}/client", put_client, GATEWAY),
    Route("PUT", "/portals/{portal_id}/sub-clients", put_sub_clients, GATEWAY),
    Route("POST", "/portals/{portal_id}/access", post_access, GATEWAY),
    Route("POST", "/users/portals", list_users_portals, GATEWAY),
    Route("GET", "/users/{user_id}/portals", list_user_portals, GATEWAY_AND_INVITATIONS),
    Route("GET", "/users/{user_id}/portals/{slug}", get_user_portal, GATEWAY),
)
CALLERS: dict[str, frozenset[str]] = callers_of(ROUTES, openapi=True)
