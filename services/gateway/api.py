"""The public JSON API under /api/v1: bodies validated here, then forwarded to the
owning service. Authorization (admin session + X-CSRF-Token, or the API key) is checked
for every /api path in security.py."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.common.errors import Conflict, InvalidInput, NotFound
from libs.common.web import json_response, parse_query, read_json

from .domain import normalise_email
from .openapi import OPENAPI
from .rendering import current_user
from .state import UPSTREAM

ID = "{id:[0-9a-fA-F-]{36}}"
Status = Literal["active", "pending", "archived"]

routes = web.RouteTableDef()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortalCreate(Strict):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Annotated[str, Field(max_length=80, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")] | None = None
    content: Annotated[str, Field(max_length=60_000)] = ""
    status: Status = "pending"


class PortalPatch(Strict):
    title: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    slug: Annotated[str, Field(max_length=80, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")] | None = None
    content: Annotated[str, Field(max_length=60_000)] | None = None
    status: Status | None = None


class ClientBody(Strict):
    user_id: UUID | None


class SubClientsBody(Strict):
    user_ids: Annotated[list[UUID], Field(max_length=500)]


class InviteBody(Strict):
    email: Annotated[str, Field(max_length=320)]
    sub_client: bool | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        email = normalise_email(value)
        if email is None:
            raise ValueError("must be one plain email address like name@example.com")
        return email


class PortalQuery(Strict):
    status: Status | None = None
    q: Annotated[str, Field(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=500)] | None = None


class InvitationQuery(Strict):
    status: Literal["pending", "accepted", "expired", "revoked"] | None = None
    portal_id: UUID | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=500)] | None = None


class UserQuery(Strict):
    q: Annotated[str, Field(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=500)] | None = None


class AccessSettings(Strict):
    invitation_expiry_days: Literal[7, 14, 21, 30] | None = None
    login_redirect: bool | None = None


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(OPENAPI)


@routes.get("/api/v1/portals")
async def list_portals(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, PortalQuery)
    page = await request.app[UPSTREAM].portals.find(q.status, q.q, q.limit, q.cursor)
    return json_response(page)


@routes.post("/api/v1/portals")
async def create_portal(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, PortalCreate)
    portal = await request.app[UPSTREAM].portals.create(body.model_dump(exclude_none=True))
    return json_response(portal, status=201)


@routes.get(f"/api/v1/portals/{ID}")
async def get_portal(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].portals.get(request.match_info["id"]))


@routes.patch(f"/api/v1/portals/{ID}")
async def patch_portal(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, PortalPatch)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise InvalidInput("Send at least one of title, slug, content, status.")
    portal = await request.app[UPSTREAM].portals.patch(request.match_info["id"], changes)
    return json_response(portal)


async def _check_users(request: web.Request, ids: list[UUID]) -> None:
    identity = request.app[UPSTREAM].identity
    try:
        await asyncio.gather(*(identity.get_user(str(i)) for i in set(ids)))
    except NotFound:
        raise InvalidInput(
            "Every user id must belong to an existing user.", code="user_not_found"
        ) from None


@routes.put(f"/api/v1/portals/{ID}/client")
async def put_client(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, ClientBody)
    if body.user_id is not None:
        await _check_users(request, [body.user_id])
    user_id = str(body.user_id) if body.user_id else None
    portal = await request.app[UPSTREAM].portals.put_client(request.match_info["id"], user_id)
    return json_response(portal)


@routes.put(f"/api/v1/portals/{ID}/sub-clients")
async def put_sub_clients(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, SubClientsBody)
    await _check_users(request, body.user_ids)
    ids = list(dict.fromkeys(str(i) for i in body.user_ids))
    portal = await request.app[UPSTREAM].portals.put_sub_clients(request.match_info["id"], ids)
    return json_response(portal)


def idempotency_key(request: web.Request) -> str | None:
    """The optional ``Idempotency-Key`` header: 1 to 200 printable ASCII characters. It names
    one invitation, whichever way it came: the same keys as ``invitation.requested``'s."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw.strip()
    if not 1 <= len(key) <= 200 or not all(" " <= c <= "~" for c in key):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 200 printable ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key


@routes.post(f"/api/v1/portals/{ID}/invitations")
async def invite(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, InviteBody)
    key = idempotency_key(request)
    user = current_user(request)
    payload = {
        "portal_id": request.match_info["id"],
        "email": body.email,
        "invited_by": user["email"] if user else "api",
    }
    if body.sub_client is not None:
        payload["sub_client"] = body.sub_client
    if key is not None:
        payload["idempotency_key"] = key
    result = await request.app[UPSTREAM].invitations.invite(payload)
    made = result.get("invitation", {})
    if key is not None and (
        made.get("portal_id") != str(UUID(request.match_info["id"]))
        or str(made.get("email", "")).lower() != body.email.lower()
    ):
        # A retry must repeat its request; another invitation under the same key is a bug
        # in the caller, not a second invitation.
        raise Conflict(
            "This Idempotency-Key was already used for another invitation.",
            code="idempotency_key_reused",
        )
    return json_response(result, status=201 if result.get("outcome") == "created" else 200)


@routes.get("/api/v1/invitations")
async def list_invitations(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, InvitationQuery)
    portal_id = str(q.portal_id) if q.portal_id else None
    page = await request.app[UPSTREAM].invitations.find(q.status, portal_id, q.limit, q.cursor)
    return json_response(page)


@routes.post(f"/api/v1/invitations/{ID}/resend")
async def resend(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].invitations.resend(request.match_info["id"]))


@routes.post(f"/api/v1/invitations/{ID}/revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].invitations.revoke(request.match_info["id"]))


async def _access(request: web.Request) -> dict[str, object]:
    up = request.app[UPSTREAM]
    access, login = await asyncio.gather(
        up.invitations.access_settings(), up.identity.login_settings()
    )
    return {
        "invitation_expiry_days": access["invitation_expiry_days"],
        "login_redirect": login["login_redirect"],
    }


@routes.get("/api/v1/settings/access")
async def get_access(request: web.Request) -> web.StreamResponse:
    return json_response(await _access(request))


@routes.put("/api/v1/settings/access")
async def put_access(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, AccessSettings)
    up = request.app[UPSTREAM]
    if body.invitation_expiry_days is not None:
        await up.invitations.put_access_settings(body.invitation_expiry_days)
    if body.login_redirect is not None:
        await up.identity.put_login_settings(body.login_redirect)
    return json_response(await _access(request))


@routes.get("/api/v1/users")
async def list_users(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, UserQuery)
    return json_response(await request.app[UPSTREAM].identity.list_users(q.q, q.limit, q.cursor))
