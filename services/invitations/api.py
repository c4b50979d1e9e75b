"""The internal HTTP API (docs/internal-api.md, "invitations"): thin views."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import InvalidInput, NotFound
from libs.common.web import POOL, json_response, parse_query, read_json

from . import domain, handlers
from .handlers import Deps, InviteCommand

DEPS = web.AppKey("deps", Deps)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class InviteBody(_Body):
    portal_id: uuid.UUID
    email: str = Field(max_length=320)
    invited_by: str | None = Field(default=None, max_length=320)
    sub_client: bool | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class AcceptBody(_Body):
    token: str = Field(max_length=domain.MAX_TOKEN_LENGTH)
    user_id: uuid.UUID


class AccessSettings(_Body):
    invitation_expiry_days: int


class ListQuery(BaseModel):
    status: Literal["pending", "accepted", "expired", "revoked"] | None = None
    portal_id: uuid.UUID | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class TokenQuery(BaseModel):
    token: str = ""


def invitation_json(row: asyncpg.Record, now: datetime) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "email": row["email"],
        "portal_id": str(row["portal_id"]),
        "portal_title": row["portal_title"],
        "portal_slug": row["portal_slug"],
        "status": domain.effective_status(row["status"], row["expires_at"], now),
        "sent_at": _iso(row["sent_at"]),
        "expires_at": _iso(row["expires_at"]),
        "delivery": row["delivery"],
        "delivery_error": row["delivery_error"],
        "sub_client": row["sub_client"],
        "invited_by": row["invited_by"],
        "accepted_at": _iso(row["accepted_at"]),
        "revoked_at": _iso(row["revoked_at"]),
        "created_at": _iso(row["created_at"]),
        "send_count": row["send_count"],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_cursor(row: asyncpg.Record) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, invitation_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), uuid.UUID(invitation_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "The cursor is not valid; start from the first page.", code="invalid_cursor"
        ) from None


def _id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("There is no such invitation.", code="invitation_not_found") from None


async def create_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, InviteBody)
    deps = request.app[DEPS]
    command = InviteCommand(
        email=body.email,
        portal_id=body.portal_id,
        invited_by=body.invited_by or None,
        sub_client=body.sub_client,
        idempotency_key=body.idempotency_key,
    )
    row, outcome = await handlers.invite(request.app[POOL], deps, command)
    # Replaying an idempotency key answers like the original request did.
    shown = "resent" if outcome == "resent" else "created"
    return json_response(
        {"invitation": invitation_json(row, deps.clock()), "outcome": shown},
        200 if outcome == "resent" else 201,
    )


async def list_invitations(request: web.Request) -> web.Response:
    query = parse_query(request, ListQuery)
    deps = request.app[DEPS]
    after = decode_cursor(query.cursor) if query.cursor else None
    rows, more = await handlers.list_page(
        request.app[POOL],
        deps,
        status=query.status,
        portal_id=query.portal_id,
        after=after,
        limit=query.limit,
    )
    now = deps.clock()
    return json_response(
        {
            "items": [invitation_json(row, now) for row in rows],
            "next_cursor": encode_cursor(rows[-1]) if more and rows else None,
        }
    )


async def get_invitation(request: web.Request) -> web.Response:
    row = await handlers.get(request.app[POOL], _id(request))
    return json_response(invitation_json(row, request.app[DEPS].clock()))


async def resend_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    row = await handlers.resend(request.app[POOL], deps, _id(request))
    return json_response(invitation_json(row, deps.clock()))


async def revoke_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    row = await handlers.revoke(request.app[POOL], deps, _id(request))
    return json_response(invitation_json(row, deps.clock()))


async def validate_token(request: web.Request) -> web.Response:
    query = parse_query(request, TokenQuery)
    row, account_exists = await handlers.validate(request.app[POOL], request.app[DEPS], query.token)
    return json_response(
        {
            "invitation_id": str(row["id"]),
            "email": row["email"],
            "portal_id": str(row["portal_id"]),
            "portal_title": row["portal_title"],
            "portal_slug": row["portal_slug"],
            "expires_at": row["expires_at"].isoformat(),
            "account_exists": account_exists,
            "sub_client": row["sub_client"],
        }
    )


async def accept_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, AcceptBody)
    deps = request.app[DEPS]
    row = await handlers.accept(request.app[POOL], deps, body.token, body.user_id)
    return json_response(invitation_json(row, deps.clock()))


async def get_access_settings(request: web.Request) -> web.Response:
    days = await handlers.get_expiry_days(request.app[POOL])
    return json_response({"invitation_expiry_days": days})


async def put_access_settings(request: web.Request) -> web.Response:
    body = await read_json(request, AccessSettings)
    days = await handlers.set_expiry_days(request.app[POOL], body.invitation_expiry_days)
    return json_response({"invitation_expiry_days": days})


def setup_routes(app: web.Application) -> None:
    # Fixed paths before /invitations/{id}, which would otherwise match them.
    app.router.add_post("/invitations", create_invitation)
    app.router.add_get("/invitations", list_invitations)
    app.router.add_get("/invitations/validate", validate_token)
    app.router.add_post("/invitations/accept", accept_invitation)
    app.router.add_get("/invitations/{id}", get_invitation)
    app.router.add_post("/invitations/{id}/resend", resend_invitation)
    app.router.add_post("/invitations/{id}/revoke", revoke_invitation)
    app.router.add_get("/settings/access", get_access_settings)
    app.router.add_put("/settings/access", put_access_settings)
