"""The public JSON API under /api/v1: bodies validated here, then forwarded to the
owning service. Authorization (admin session + X-CSRF-Token, or the API key) is checked
for every /api path in security.py. Each route declares its models beside it: that is
its entry in the OpenAPI document (openapi.py, docs/openapi.json)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from libs.common.cursor import Cursor
from libs.common.email import normalise_email, same_email
from libs.common.errors import Conflict, InvalidInput, Unreadable
from libs.common.i18n import LANGUAGE_MESSAGE, is_language
from libs.common.json_body import EXACT
from libs.common.openapi import UUID as UUID_SCHEMA
from libs.common.openapi import UUID_PATTERN, ApiRoutes
from libs.common.web import json_response, parse_query, read_body, read_json, readable

from ..contracts import (
    AccessSettingsView,
    BatchResult,
    GroupInviteResult,
    Invitation,
    InvitationPage,
    InviteResult,
    Portal,
    PortalPage,
    User,
    UserPage,
)
from ..domain import (
    EXPIRY_CHOICES,
    LINK_EXPIRY_CHOICES,
    MAX_CONTENT,
    MAX_GROUP_PORTALS,
    MAX_PERSONAL_MESSAGE,
    MAX_REVISION,
    PERSONAL_MESSAGE_TOO_LONG,
    PORTAL_BODY_LIMIT,
    parse_uuid,
)
from ..handlers import bulk
from ..rendering import current_user
from ..state import UPSTREAM, req_state

Status = Literal["active", "pending", "archived"]

API = ApiRoutes(
    "/api/v1",
    {"id": (UUID_PATTERN, UUID_SCHEMA), "delivery_id": (UUID_PATTERN, UUID_SCHEMA)},
)
routes = API.routes


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Slug = Annotated[
    str,
    Field(
        max_length=80,
        pattern=readable(
            r"^[a-z0-9]+(-[a-z0-9]+)*$",
            "Use lower-case letters, digits and single hyphens, e.g. acme-rebrand.",
        ),
    ),
]


class PortalCreate(Strict):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Slug | None = None
    content: Annotated[str, Field(max_length=MAX_CONTENT)] = ""
    status: Status = "pending"


class PortalPatch(Strict):
    title: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    slug: Slug | None = None
    content: Annotated[str, Field(max_length=MAX_CONTENT)] | None = None
    status: Status | None = None
    revision: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_REVISION,
            description="change the portal only if it is still at this revision (from GET);"
            " otherwise 409 portal_changed, with its current revision",
        ),
    ] = None


class ClientBody(Strict):
    user_id: UUID | None


class SubClientsBody(Strict):
    user_ids: Annotated[list[UUID], Field(max_length=500)]


def _one_address(value: str) -> str:
    """The address, or 422 ``invalid_email`` as the services, a batch row and an event
    answer it (a ValueError here would be pydantic's ``invalid_input``)."""
    return normalise_email(value)


def checked_locale(value: str | None) -> str | None:
    if value is not None and not is_language(value):
        raise ValueError(LANGUAGE_MESSAGE)
    return value


# One email address in a body or a query (libs/common/email.py's rule), trimmed.
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_one_address)]


# An invitation's optional ``locale`` (its emails' and pages' language), or the agency's.
InviteLanguage = Annotated[
    str | None,
    Field(
        max_length=20,
        description="the language of the emails and of the pages their links open: en, de,"
        " fr or es; default the agency's (Settings → Branding)",
    ),
    AfterValidator(checked_locale),
]


class InviteBody(Strict):
    email: EmailAddress
    sub_client: bool | None = None
    expires_in_days: int | None = None
    personal_message: str | None = None
    locale: InviteLanguage = None
    invited_by: Annotated[
        str | None,
        Field(
            max_length=100,
            description=(
                "with an API key: the display name the email gives as the inviter (e.g."
                " the CRM user's name); default the key's name. Ignored for a session,"
                " whose user is the inviter."
            ),
        ),
    ] = None

    @field_validator("invited_by")
    @classmethod
    def _inviter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cleaned = " ".join(value.split())  # no line breaks in an email's sentence
        return cleaned or None

    @field_validator("expires_in_days")
    @classmethod
    def _expiry(cls, value: int | None) -> int | None:
        if value is not None and value not in EXPIRY_CHOICES:
            raise ValueError(LINK_EXPIRY_CHOICES)
        return value

    @field_validator("personal_message")
    @classmethod
    def _message(cls, value: str | None) -> str | None:
        if value is not None and len(value.strip()) > MAX_PERSONAL_MESSAGE:
            raise ValueError(PERSONAL_MESSAGE_TOO_LONG)
        return value


class PortalQuery(Strict):
    status: Status | None = None
    q: Annotated[str, Field(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None


class InvitationQuery(Strict):
    status: Literal["pending", "accepted", "expired", "revoked"] | None = None
    portal_id: UUID | None = None
    email: Annotated[EmailAddress | None, Field(description="exact address, case-insensitive")] = (
        None
    )

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None


class UserQuery(Strict):
    q: Annotated[str, Field(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None


class AccessSettings(Strict):
    invitation_expiry_days: Annotated[Literal[7, 14, 21, 30], EXACT] | None = None
    # Invitation Reminder: days before expiry, 0 = Off.
    invitation_reminder_days: Annotated[Literal[0, 1, 3], EXACT] | None = None
    login_redirect: bool | None = None


@API.get("/portals", "List portals", query=PortalQuery, response=PortalPage)
async def list_portals(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, PortalQuery)
    page = await request.app[UPSTREAM].portals.find(q.status, q.q, q.limit, q.cursor)
    return json_response(page)


# An integration key past INVITATIONS_REQUESTS_PER_KEY_HOUR (a person is not counted).
KEY_CAPPED = (
    "429 integration_rate_limited (past the key's cap an hour; Retry-After, error.retry_at)"
)


@API.post(
    "/portals",
    "Create a portal",
    body=PortalCreate,
    response=Portal,
    status=201,
    errors=[
        "409 slug_taken",
        "413 body_too_large",
        "422 invalid_character",
        "422 content_too_large (the Content's page would be over 1,000,000 characters)",
    ],
)
async def create_portal(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, PortalCreate, limit=PORTAL_BODY_LIMIT)
    portal = await request.app[UPSTREAM].portals.create(body.model_dump(exclude_none=True))
    return json_response(portal, status=201)


@API.get("/portals/{id}", "Get a portal", response=Portal, errors=["404 portal_not_found"])
async def get_portal(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].portals.get(request.match_info["id"]))


@API.patch(
    "/portals/{id}",
    "Update title, slug, content or status",
    body=PortalPatch,
    response=Portal,
    errors=[
        "404 portal_not_found",
        "409 slug_taken",
        "409 portal_changed",
        "413 body_too_large",
        "422 invalid_character",
        "422 content_too_large (the Content's page would be over 1,000,000 characters)",
    ],
)
async def patch_portal(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, PortalPatch, limit=PORTAL_BODY_LIMIT)
    changes = body.model_dump(exclude_none=True, exclude={"revision"})
    if not changes:
        raise InvalidInput("Send at least one of title, slug, content, status.")
    if body.revision is not None:
        changes["revision"] = body.revision
    portal = await request.app[UPSTREAM].portals.patch(request.match_info["id"], changes)
    return json_response(portal)


async def _check_users(request: web.Request, ids: list[UUID]) -> None:
    wanted = {str(i) for i in ids}
    if not wanted:
        return
    found = await request.app[UPSTREAM].identity.get_users(wanted)
    if wanted - found.keys():
        raise InvalidInput("Every user id must belong to an existing user.", code="user_not_found")
    # Disabling took the person off every portal, and only a new invitation gives access
    # back: attached here, they would be on the portal again the moment they are enabled.
    disabled = sorted(user_id for user_id, user in found.items() if user.get("disabled"))
    if disabled:
        raise InvalidInput(
            f"The user {disabled[0]} is disabled: enable the account first, then invite them.",
            code="user_disabled",
        )


@API.put(
    "/portals/{id}/client",
    "Set (or clear) the primary client",
    body=ClientBody,
    response=Portal,
    errors=["404 portal_not_found", "422 user_not_found", "422 user_disabled"],
)
async def put_client(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, ClientBody)
    if body.user_id is not None:
        await _check_users(request, [body.user_id])
    user_id = str(body.user_id) if body.user_id else None
    portal = await request.app[UPSTREAM].portals.put_client(request.match_info["id"], user_id)
    return json_response(portal)


@API.put(
    "/portals/{id}/sub-clients",
    "Replace the sub-clients",
    body=SubClientsBody,
    response=Portal,
    errors=["404 portal_not_found", "422 user_not_found", "422 user_disabled"],
)
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


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Your stable id for this request: repeating it returns the same invitation and"
        " sends no second email; used with another email or portal it answers 409"
        " idempotency_key_reused."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


def _inviter(request: web.Request, named: str | None) -> str:
    """Who the email says invited: the staff member, or for a call made with a key the name
    the caller gave, else the key's name."""
    user = current_user(request)
    return user["email"] if user else named or req_state(request).key_name or "api"


@API.post(
    "/portals/{id}/invitations",
    "Invite a client by email (resends when one is already pending)",
    body=InviteBody,
    response=InviteResult,
    status=201,
    also=[(200, "Already pending: resent")],
    headers=[IDEMPOTENCY_KEY],
    errors=[
        "404 portal_not_found",
        "409 portal_not_active",
        "409 already_has_access",
        "409 idempotency_key_reused",
        "422 invalid_email",
        "422 invalid_character (invited_by, personal_message)",
        "422 invalid_idempotency_key",
        "429 send_rate_limited (already pending: beyond the caps on new links)",
        KEY_CAPPED,
    ],
)
async def invite(request: web.Request) -> web.StreamResponse:
    body, fields = await _invitation(request, InviteBody)
    payload = {
        "portal_id": request.match_info["id"],
        **fields,
        # Already pending: it gets a new link, and invitation.resent says the API asked.
        "resend_reason": "api",
    }
    result = await request.app[UPSTREAM].invitations.invite(payload)
    made = result.get("invitation", {})
    if "idempotency_key" in fields and (
        made.get("portal_id") != str(UUID(request.match_info["id"]))
        or not same_email(str(made.get("email", "")), body.email)
    ):
        # A retry must repeat its request; another invitation under the same key is a bug
        # in the caller, not a second invitation.
        raise Conflict(
            "This Idempotency-Key was already used for another invitation.",
            code="idempotency_key_reused",
        )
    return json_response(result, status=201 if result.get("outcome") == "created" else 200)


Body = TypeVar("Body", bound=InviteBody)


async def _invitation(request: web.Request, model: type[Body]) -> tuple[Body, dict[str, Any]]:
    """The posted invitation, and its fields as the invitations service takes them: the
    given ones, the inviter (_inviter) and the request's Idempotency-Key."""
    body = await read_json(request, model)
    key = idempotency_key(request)
    payload: dict[str, Any] = {
        "email": body.email,
        "invited_by": _inviter(request, body.invited_by),
    }
    for field in ("sub_client", "expires_in_days", "personal_message", "name", "locale"):
        value = getattr(body, field, None)
        if value is not None:
            payload[field] = value
    if key is not None:
        payload["idempotency_key"] = key
    return body, payload


class GroupInviteBody(InviteBody):
    portal_ids: Annotated[
        list[UUID],
        Field(
            min_length=1,
            max_length=MAX_GROUP_PORTALS,
            description="the portals (1 to 20, each once, each Active) to invite the person"
            " to: one invitation per portal, one email and one link for all of them",
        ),
    ]
    name: (
        Annotated[str, Field(max_length=200, description="the invitee's name: in the greeting")]
        | None
    ) = None


GROUP_KEY = {
    **IDEMPOTENCY_KEY,
    "description": (
        "Your stable id for this request: repeating it returns the same invitations and"
        " sends no second email; used with another email or other portals (or for an"
        " invitation to one portal) it answers 409 idempotency_key_reused."
    ),
}


@API.post(
    "/invitations",
    "Invite one person to several portals with one email: one invitation per portal, one"
    " link that accepts every one still Active",
    body=GroupInviteBody,
    response=GroupInviteResult,
    status=201,
    headers=[GROUP_KEY],
    errors=[
        "404 portal_not_found (error.portal_id)",
        "409 portal_not_active (error.portal_ids)",
        "409 already_has_access (error.portal_ids)",
        "409 invitation_pending (error.portal_ids)",
        "409 idempotency_key_reused",
        "422 duplicate_portal",
        "422 invalid_email",
        "422 invalid_character (name, invited_by, personal_message)",
        "422 invalid_idempotency_key",
        KEY_CAPPED,
    ],
)
async def invite_several(request: web.Request) -> web.StreamResponse:
    body, fields = await _invitation(request, GroupInviteBody)
    payload = {"portal_ids": [str(p) for p in body.portal_ids], **fields}
    result = await request.app[UPSTREAM].invitations.invite_group(payload)
    return json_response(result, status=201)


class BatchInvitation(Strict):
    # No length limits: a bad address or a long name or message, however long, is a
    # verdict on its row (bulk._rejection), never a 422 for the whole batch; nor is a
    # contact without an address (null), as an empty email cell in a CSV file isn't.
    email: str | None
    name: Annotated[str, Field(description="the invitee's name")] | None = None
    personal_message: str | None = None
    sub_client: bool | None = None
    key: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=200,
                pattern=readable(r"^[ -~]+$", "A key must be printable ASCII characters."),
                description="this row's idempotency key: a retry answers as the first time",
            ),
        ]
        | None
    ) = None


class BatchBody(Strict):
    # The row limit is bulk.check_size's, so JSON is refused as a CSV file is (422
    # too_many_rows, its words), not with a validation message about list items.
    invitations: Annotated[
        list[BatchInvitation],
        Field(min_length=1, json_schema_extra={"maxItems": bulk.MAX_ROWS}),
    ]


class BatchQuery(Strict):
    dry_run: Annotated[
        bool, Field(description="answer what a send would do now, and send nothing (a preview)")
    ] = False
    locale: InviteLanguage = None


# 10,000 rows with a name and a 1,000-character message each.
BATCH_BODY_LIMIT = 16 * 1024 * 1024
# What senders call a CSV body: the registered type (RFC 7111) and the names in use before it.
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/x-csv", "text/comma-separated-values"})

BATCH_KEY = {
    **IDEMPOTENCY_KEY,
    "description": (
        "Your stable id for this batch: a row without its own key is keyed by this and its"
        " row number, so repeating the request answers each row as before and sends nothing"
        " twice."
    ),
}


def _not_too_many(value: Any) -> None:
    """Over the row limit, refused before a row is validated (read_json's ``check``)."""
    rows = value.get("invitations") if isinstance(value, dict) else None
    if isinstance(rows, list) and len(rows) > bulk.MAX_ROWS:
        bulk.check_size(len(rows))


@API.post(
    "/portals/{id}/invitations/batch",
    "Invite many clients at once: JSON, or a text/csv body (comma, semicolon or tab"
    " separated; UTF-8 unless a charset is declared) with an email column (and optionally"
    " name, personal_message, sub_client); up to 10,000 rows",
    body=BatchBody,
    query=BatchQuery,
    response=BatchResult,
    headers=[BATCH_KEY],
    any_type=True,
    errors=[
        "404 portal_not_found",
        "409 portal_not_active",
        "413 body_too_large",
        "422 invalid_encoding",
        "422 not_csv",
        "422 no_email_column",
        "422 too_many_rows",
        "422 empty_file",
        "422 invalid_idempotency_key",
    ],
)
async def invite_batch(request: web.Request) -> web.StreamResponse:
    query = parse_query(request, BatchQuery)
    key = idempotency_key(request)
    unread: list[str] = []
    if request.content_type in CSV_TYPES:
        rows, unread = bulk.parse_csv(await read_body(request, BATCH_BODY_LIMIT), request.charset)
    else:
        try:
            body = await read_json(
                request,
                BatchBody,
                limit=BATCH_BODY_LIMIT,
                nul_ok=True,
                any_type=True,
                check=_not_too_many,
            )
        except Unreadable:
            raise Unreadable(
                "The request body must be JSON, or a CSV file sent with Content-Type: text/csv."
            ) from None
        bulk.check_size(len(body.invitations))
        rows = [
            bulk.Row(**{**item.model_dump(), "email": item.email or ""})
            for item in body.invitations
        ]
    results = await bulk.send(
        request.app[UPSTREAM].invitations,
        str(UUID(request.match_info["id"])),
        rows,
        request_key=key,
        invited_by=_inviter(request, None),
        dry_run=query.dry_run,
        locale=query.locale,
    )
    answer: dict[str, Any] = {"results": results}
    if unread:
        answer["unread_columns"] = unread
    return json_response(answer)


@API.get(
    "/invitations",
    "List invitations, newest first",
    query=InvitationQuery,
    response=InvitationPage,
    errors=["422 invalid_cursor"],
)
async def list_invitations(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, InvitationQuery)
    portal_id = str(q.portal_id) if q.portal_id else None
    page = await request.app[UPSTREAM].invitations.find(
        q.status, portal_id, q.limit, q.cursor, email=q.email
    )
    return json_response(page)


@API.get(
    "/invitations/{id}",
    "Get an invitation",
    response=Invitation,
    errors=["404 invitation_not_found"],
)
async def get_invitation(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].invitations.get(request.match_info["id"]))


@API.post(
    "/invitations/{id}/resend",
    "Resend with a new link and expiry",
    response=Invitation,
    errors=[
        "404 invitation_not_found",
        "409 invitation_accepted",
        "409 invitation_revoked",
        "409 invitation_pending (a newer one to the same person and portal)",
        "409 portal_not_active",
        "429 send_rate_limited (Retry-After, error.retry_at)",
        KEY_CAPPED,
    ],
)
async def resend(request: web.Request) -> web.StreamResponse:
    invitations = request.app[UPSTREAM].invitations
    return json_response(await invitations.resend(request.match_info["id"], reason="api"))


@API.post(
    "/invitations/{id}/revoke",
    "Revoke the link",
    response=Invitation,
    errors=["404 invitation_not_found", "409 invitation_accepted"],
)
async def revoke(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[UPSTREAM].invitations.revoke(request.match_info["id"]))


async def _access(request: web.Request) -> dict[str, object]:
    up = request.app[UPSTREAM]
    access, login = await asyncio.gather(
        up.invitations.access_settings(), up.identity.login_settings()
    )
    return {
        "invitation_expiry_days": access["invitation_expiry_days"],
        "invitation_reminder_days": access["invitation_reminder_days"],
        "login_redirect": login["login_redirect"],
    }


@API.get("/settings/access", "Access & Login settings", response=AccessSettingsView)
async def get_access(request: web.Request) -> web.StreamResponse:
    return json_response(await _access(request))


@API.put(
    "/settings/access",
    "Change Access & Login settings (fields left out are unchanged)",
    body=AccessSettings,
    response=AccessSettingsView,
)
async def put_access(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, AccessSettings)
    up = request.app[UPSTREAM]
    if body.invitation_expiry_days is not None or body.invitation_reminder_days is not None:
        await up.invitations.put_access_settings(
            body.invitation_expiry_days, body.invitation_reminder_days
        )
    if body.login_redirect is not None:
        await up.identity.put_login_settings(body.login_redirect)
    return json_response(await _access(request))


@API.get("/users", "List users", query=UserQuery, response=UserPage)
async def list_users(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, UserQuery)
    return json_response(await request.app[UPSTREAM].identity.list_users(q.q, q.limit, q.cursor))


@API.post(
    "/users/{id}/erase",
    "Erase a user (the right to erasure), for good: the account and its sessions are deleted,"
    " the person leaves every portal, their invitations are revoked and keep no address or"
    " name, and the Activity log says 'Erased user' where it named them"
    " (docs/reliability.md 'Erasing a person'). Answers the account as it was. Administrators"
    " only; no one erases their own account or the last active Administrator.",
    response=User,
    errors=[
        "404 user_not_found (also: erased already)",
        "409 last_administrator",
        "422 cannot_erase_self",
    ],
)
async def erase_user(request: web.Request) -> web.StreamResponse:
    me = current_user(request)
    user_id = request.match_info["id"]
    if me is not None and parse_uuid(user_id) == me["id"]:
        raise InvalidInput("You can't erase your own account.", code="cannot_erase_self")
    return json_response(await request.app[UPSTREAM].identity.erase_user(user_id))
