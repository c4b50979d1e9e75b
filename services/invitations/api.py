"""The internal HTTP API (docs/internal-api.md, "invitations"): thin views."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.cursor import Cursor, decode_cursor, encode_cursor
from libs.common.errors import NotFound
from libs.common.service_auth import GATEWAY
from libs.common.web import (
    Route,
    callers_of,
    json_response,
    parse_query,
    path_uuid,
    read_json,
    relay_held,
)

from . import domain, handlers
from .handlers import Deps, InviteCommand, NewLinkWorker, batch
from .handlers.key_cap import key_allowance

DEPS = web.AppKey("deps", Deps)
NEW_LINKS = web.AppKey("new_links", NewLinkWorker)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


InvitedBy = Annotated[str | None, Field(max_length=320)]
# Checked by the handler, which answers a clear invalid_locale.
Locale = Annotated[str | None, Field(max_length=100)]


class InviteBody(_Body):
    portal_id: uuid.UUID
    email: str = Field(max_length=320)
    invited_by: InvitedBy = None
    sub_client: bool | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    expires_in_days: int | None = None
    # Far above the 1,000 allowed: the handler answers a clear personal_message_too_long.
    personal_message: str | None = Field(default=None, max_length=65_536)
    locale: Locale = None

    # Who asks, should the invitation be pending already and get a new link instead.
    resend_reason: Literal["staff", "api"] = "staff"


class StaffInviteBody(_Body):
    email: str = Field(max_length=320)
    # Checked by the handler, which answers a clear invalid_role.
    role: str = Field(max_length=50)
    invited_by: InvitedBy = None
    # The sending Administrator's user id (the gateway's session user): their open staff
    # invitations are revoked when they lose the right to send them. None: no person (the
    # bootstrap key), or a caller from before it was sent.
    invited_by_id: uuid.UUID | None = None
    locale: Locale = None
    # The Invite Staff form's own key: posted again (a double click, the back button)
    # while its invitation is pending, nothing more is sent.
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class GroupBody(_Body):
    email: str = Field(max_length=320)
    # Far above the 20 allowed: the handler answers a clear too_many_portals.
    portal_ids: list[uuid.UUID] = Field(max_length=1000)
    invited_by: InvitedBy = None
    sub_client: bool | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    expires_in_days: int | None = None
    personal_message: str | None = Field(default=None, max_length=65_536)
    name: str | None = Field(default=None, max_length=1000)
    locale: Locale = None


class BatchRowBody(_Body):
    # Far above the limits: the handler answers each row with a clear reason. The gateway
    # answers a longer cell itself (its bulk.CELL_LIMIT).
    email: str = Field(max_length=65_536)
    name: str | None = Field(default=None, max_length=65_536)
    personal_message: str | None = Field(default=None, max_length=65_536)
    sub_client: bool | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=300)


class BatchBody(_Body):
    portal_id: uuid.UUID
    invited_by: InvitedBy = None
    dry_run: bool = False
    locale: Locale = None
    rows: list[BatchRowBody] = Field(min_length=1, max_length=batch.MAX_ROWS)


# 1,000 rows of a 1,000-character message each, encoded, with room to spare.
BATCH_BODY_LIMIT = 8 * 1024 * 1024


class ResendBody(_Body):
    reason: Literal["staff", "api"] = "staff"
    # The sent time the screen showed: sent again since (a double click, the back button),
    # nothing more is sent and the answer is the invitation as it is.
    shown_sent_at: datetime | None = None


class NewLinkBody(_Body):
    # Anything: an unknown or malformed token is answered like every other.
    token: str = Field(default="", max_length=2000)


class ReserveBody(_Body):
    token: str = Field(max_length=domain.MAX_TOKEN_LENGTH)


class AcceptBody(_Body):
    token: str = Field(max_length=domain.MAX_TOKEN_LENGTH)
    claim: uuid.UUID
    user_id: uuid.UUID


class ReleaseBody(_Body):
    token: str = Field(max_length=domain.MAX_TOKEN_LENGTH)
    claim: uuid.UUID
    reopen: bool = False


class AccessSettings(_Body):
    invitation_expiry_days: int | None = None
    # Invitation Reminder: days before expiry, 0 = Off (0, 1 or 3).
    invitation_reminder_days: int | None = None


class ListQuery(BaseModel):
    status: Literal["pending", "accepted", "expired", "revoked"] | None = None
    portal_id: uuid.UUID | None = None
    email: str | None = Field(default=None, max_length=320)
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Cursor | None = None


class CountsQuery(BaseModel):
    portal_id: uuid.UUID | None = None
    email: str | None = Field(default=None, max_length=320)


class TokenQuery(BaseModel):
    token: str = ""


def invitation_json(row: asyncpg.Record, now: datetime) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "email": row["email"],
        "portal_id": _str(row["portal_id"]),
        "portal_title": row["portal_title"],
        "portal_slug": row["portal_slug"],
        # A staff invitation's role (administrator, staff); null for a client's invitation,
        # which has a portal instead.
        "role": row["staff_role"],
        "status": domain.effective_status(row["status"], row["expires_at"], now),
        "sent_at": _iso(row["sent_at"]),
        "expires_at": _iso(row["expires_at"]),
        "delivery": row["delivery"],
        "delivery_error": row["delivery_error"],
        "delivery_next_attempt_at": _iso(row["delivery_next_attempt_at"]),
        "sub_client": row["sub_client"],
        "invited_by": row["invited_by"],
        "accepted_at": _iso(row["accepted_at"]),
        "revoked_at": _iso(row["revoked_at"]),
        "created_at": _iso(row["created_at"]),
        "send_count": row["send_count"],
        "expires_in_days": row["expires_in_days"],
        "personal_message": row["personal_message"],
        "name": row["invitee_name"],
        "send_reason": row["send_reason"],
        "reminded_at": _iso(row["reminded_at"]),
        "group_id": _str(row["group_id"]),
        # The language of its emails and pages; null: the agency's Language.
        "locale": row["locale"],
    }


def staff_invitation_json(row: asyncpg.Record, now: datetime) -> dict[str, Any]:
    """A staff invitation's JSON: an invitation's, and the user id of the Administrator who
    sent it (null: no person, or sent before senders were recorded)."""
    return {**invitation_json(row, now), "invited_by_id": _str(row["invited_by_id"])}


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _linked(row: asyncpg.Record) -> dict[str, Any]:
    """One invitation accepting a link takes (validate, reserve, accept): what the
    gateway grants."""
    return {
        "invitation_id": str(row["id"]),
        "portal_id": _str(row["portal_id"]),
        "portal_title": row["portal_title"],
        "portal_slug": row["portal_slug"],
        "sub_client": row["sub_client"],
        "idempotency_key": row["idempotency_key"],
        # The invitation's language: its accept page is shown in it. Null: the agency's.
        "locale": row["locale"],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _id(request: web.Request) -> uuid.UUID:
    no_invitation = NotFound("There is no such invitation.", code="invitation_not_found")
    return path_uuid(request, "id", no_invitation)


async def create_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, InviteBody)
    deps = request.app[DEPS]
    command = InviteCommand.from_fields(body, invited_by=body.invited_by or None)
    allowance = await key_allowance(deps)
    await allowance.check_one(command.idempotency_key)
    row, outcome = await handlers.invite(deps, command)
    await allowance.spend(0 if outcome == "duplicate" else 1)
    # Replaying an idempotency key answers like the original request did.
    shown = "resent" if outcome == "resent" else "created"
    return json_response(
        {"invitation": invitation_json(row, deps.clock()), "outcome": shown},
        200 if outcome == "resent" else 201,
    )


async def create_group(request: web.Request) -> web.Response:
    """Several portals, one invitation: one per portal, one email, one link."""
    body = await read_json(request, GroupBody)
    deps = request.app[DEPS]
    command = handlers.GroupCommand.from_fields(
        body,
        portal_ids=tuple(body.portal_ids),
        invited_by=body.invited_by or None,
        invitee_name=body.name,
    )
    allowance = await key_allowance(deps)
    await allowance.check_one(command.idempotency_key)
    group = await handlers.invite_group(deps, command)
    await allowance.spend(0 if group.outcome == "duplicate" else 1)
    now = deps.clock()
    # Replaying an idempotency key answers like the original request did.
    return json_response(
        {
            "group_id": str(group.group_id),
            "invitations": [invitation_json(row, now) for row in group.invitations],
        },
        201,
    )


async def create_batch(request: web.Request) -> web.Response:
    body = await read_json(request, BatchBody, limit=BATCH_BODY_LIMIT)
    rows = [
        batch.BatchRow(
            row=number,
            email=item.email,
            name=item.name,
            personal_message=item.personal_message,
            sub_client=item.sub_client,
            key=item.idempotency_key,
        )
        for number, item in enumerate(body.rows, start=1)
    ]
    # The relay waits while the batch is written (at most a few seconds): the answer,
    # every row durable, comes first, and the batch's events are published right after.
    with relay_held(request.app):
        results = await batch.invite_batch(
            request.app[DEPS],
            body.portal_id,
            rows,
            invited_by=body.invited_by or None,
            dry_run=body.dry_run,
            locale=body.locale,
        )
    return json_response({"results": [_result_json(r) for r in results]})


def _result_json(result: batch.RowResult) -> dict[str, Any]:
    data: dict[str, Any] = {"row": result.row, "email": result.email, "status": result.status}
    if result.invitation_id is not None:
        data["invitation_id"] = str(result.invitation_id)
    if result.reason is not None:
        data["reason"] = result.reason
        data["message"] = result.message
    return data


async def list_invitations(request: web.Request) -> web.Response:
    query = parse_query(request, ListQuery)
    deps = request.app[DEPS]
    after = decode_cursor("invitations", query.cursor) if query.cursor else None
    rows, more = await handlers.list_page(
        deps,
        status=query.status,
        portal_id=query.portal_id,
        after=after,
        limit=query.limit,
        email=query.email or None,
    )
    now = deps.clock()
    return json_response(
        {
            "items": [invitation_json(row, now) for row in rows],
            "next_cursor": encode_cursor("invitations", rows[-1]["created_at"], rows[-1]["id"])
            if more and rows
            else None,
        }
    )


async def invitation_counts(request: web.Request) -> web.Response:
    query = parse_query(request, CountsQuery)
    counts = await handlers.status_counts(
        request.app[DEPS], portal_id=query.portal_id, email=query.email or None
    )
    return json_response(counts)


async def get_invitation(request: web.Request) -> web.Response:
    row = await handlers.get(request.app[DEPS], _id(request))
    return json_response(invitation_json(row, request.app[DEPS].clock()))


async def resend_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    # The body is optional (the reason defaults to staff).
    body = await read_json(request, ResendBody) if request.body_exists else ResendBody()
    allowance = await key_allowance(deps)
    await allowance.check_one()
    row = await handlers.resend(
        deps, _id(request), reason=body.reason, shown_sent_at=body.shown_sent_at
    )
    await allowance.spend(1)
    return json_response(invitation_json(row, deps.clock()))


async def new_link(request: web.Request) -> web.Response:
    """Email me a new link: always 202, before anything about the link is looked up (the
    worker serves the request afterwards, handlers/new_link.py)."""
    # A link's token is only ever hashed: one holding NUL is a link we never sent, and gets
    # the same answer as any other (the page may not tell them apart).
    body = await read_json(request, NewLinkBody, nul_ok=True)
    await handlers.request_new_link(request.app[DEPS], body.token)
    request.app[NEW_LINKS].wake()
    return json_response({"status": "requested"}, 202)


async def revoke_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    row = await handlers.revoke(deps, _id(request))
    return json_response(invitation_json(row, deps.clock()))


async def validate_token(request: web.Request) -> web.Response:
    # Looked up by its hash: a NUL in it is a link we never sent (invitation_invalid).
    query = parse_query(request, TokenQuery, nul_ok=True)
    rows, account = await handlers.validate(request.app[DEPS], query.token)
    row = rows[0]
    return json_response(
        {
            # The first invitation as accepting the link grants it, and what its page shows.
            **_linked(row),
            "email": row["email"],
            "role": row["staff_role"],
            "expires_at": row["expires_at"].isoformat(),
            "account_exists": account.exists,
            "account_disabled": account.disabled,
            # A group's link: each invitation accepting it takes now (the first is above).
            "group_id": _str(row["group_id"]),
            "invitations": [_linked(r) for r in rows],
        }
    )


async def reserve_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, ReserveBody)
    deps = request.app[DEPS]
    rows, claim = await handlers.reserve(deps, body.token)
    now = deps.clock()
    return json_response(
        {
            "claim": str(claim),
            "invitation": invitation_json(rows[0], now),
            "invitations": [_linked(r) for r in rows],
        }
    )


async def accept_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, AcceptBody)
    deps = request.app[DEPS]
    rows = await handlers.accept(deps, body.token, body.claim, body.user_id)
    now = deps.clock()
    # The first invitation, as before, and (a group's link) every one accepted: what the
    # gateway grants.
    return json_response(
        {**invitation_json(rows[0], now), "invitations": [_linked(r) for r in rows]}
    )


async def release_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, ReleaseBody)
    await handlers.release(request.app[DEPS], body.token, body.claim, reopen=body.reopen)
    return web.Response(status=204)


async def create_staff_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, StaffInviteBody)
    deps = request.app[DEPS]
    row, outcome = await handlers.invite_staff(
        deps,
        body.email,
        body.role,
        body.invited_by or None,
        body.locale,
        body.idempotency_key,
        body.invited_by_id,
    )
    shown = "resent" if outcome == "resent" else "created"
    return json_response(
        {"invitation": staff_invitation_json(row, deps.clock()), "outcome": shown},
        200 if outcome == "resent" else 201,
    )


async def list_staff_invitations(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    rows = await handlers.open_staff_invitations(deps)
    now = deps.clock()
    return json_response({"items": [staff_invitation_json(row, now) for row in rows]})


async def resend_staff_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    # The body is optional: the sent time the Users screen showed (ResendBody).
    body = await read_json(request, ResendBody) if request.body_exists else ResendBody()
    row = await handlers.resend(deps, _id(request), staff=True, shown_sent_at=body.shown_sent_at)
    return json_response(staff_invitation_json(row, deps.clock()))


async def revoke_staff_invitation(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    row = await handlers.revoke(deps, _id(request), staff=True)
    return json_response(staff_invitation_json(row, deps.clock()))


async def _access(deps: Deps) -> dict[str, int]:
    return {
        "invitation_expiry_days": await handlers.get_expiry_days(deps),
        "invitation_reminder_days": await handlers.get_reminder_days(deps),
    }


async def get_access_settings(request: web.Request) -> web.Response:
    return json_response(await _access(request.app[DEPS]))


async def put_access_settings(request: web.Request) -> web.Response:
    """Fields left out are unchanged."""
    body = await read_json(request, AccessSettings)
    deps = request.app[DEPS]
    await handlers.change_access_settings(
        deps,
        expiry_days=body.invitation_expiry_days,
        reminder_days=body.invitation_reminder_days,
    )
    return json_response(await _access(deps))


# Who may call each route (libs/common/web.py require_service_proof; docs/internal-api.md
# "Who may call what"): only the gateway.
ROUTES = (
    # Fixed paths before /invitations/{id}, which would otherwise match them.
    Route("POST", "/invitations", create_invitation, GATEWAY),
    Route("GET", "/invitations", list_invitations, GATEWAY),
    Route("POST", "/invitations/batch", create_batch, GATEWAY),
    Route("POST", "/invitations/group", create_group, GATEWAY),
    Route("GET", "/invitations/counts", invitation_counts, GATEWAY),
    Route("GET", "/invitations/validate", validate_token, GATEWAY),
    Route("POST", "/invitations/reserve", reserve_invitation, GATEWAY),
    Route("POST", "/invitations/accept", accept_invitation, GATEWAY),
    Route("POST", "/invitations/release", release_invitation, GATEWAY),
    Route("POST", "/invitations/new-link", new_link, GATEWAY),
    Route("GET", "/invitations/{id}", get_invitation, GATEWAY),
    Route("POST", "/invitations/{id}/resend", resend_invitation, GATEWAY),
    Route("POST", "/invitations/{id}/revoke", revoke_invitation, GATEWAY),
    Route("POST", "/staff-invitations", create_staff_invitation, GATEWAY),
    Route("GET", "/staff-invitations", list_staff_invitations, GATEWAY),
    Route("POST", "/staff-invitations/{id}/resend", resend_staff_invitation, GATEWAY),
    Route("POST", "/staff-invitations/{id}/revoke", revoke_staff_invitation, GATEWAY),
    Route("GET", "/settings/access", get_access_settings, GATEWAY),
    Route("PUT", "/settings/access", put_access_settings, GATEWAY),
)
CALLERS: dict[str, frozenset[str]] = callers_of(ROUTES, openapi=True)
