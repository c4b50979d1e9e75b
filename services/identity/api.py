"""Thin HTTP views over the identity handlers (docs/internal-api.md, "identity")."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.cursor import Cursor
from libs.common.errors import NotFound
from libs.common.passwords import PASSWORD_FIELD
from libs.common.service_auth import GATEWAY
from libs.common.web import Route, callers_of, json_response, parse_query, path_uuid, read_json

from . import handlers, repository
from .background import Background
from .domain import ActivityEntry, Role, User

DEPS = web.AppKey("identity_deps", handlers.Deps)
BACKGROUND = web.AppKey("identity_background", Background)
SESSION_HEADER = "X-Session-Token"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateUserBody(_Body):
    email: str = Field(max_length=1000)
    password: str
    role: Role = "client"


class EnsureUserBody(_Body):
    email: str = Field(max_length=1000)
    password: str
    invitation_id: uuid.UUID
    # A staff invitation's role (Users → Invite Staff); a client's invitation leaves it out.
    role: Role = "client"
    # The invitation's language: set on a new account only (an existing one keeps its own).
    locale: str | None = Field(default=None, max_length=100)


class ListUsersQuery(_Body):
    q: str | None = Field(default=None, max_length=320)
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Cursor | None = None


class LookupQuery(_Body):
    email: str = Field(max_length=1000)


class RoleBody(_Body):
    role: Role


class LookupManyBody(_Body):
    # 500 addresses of at most 320 characters stay under the app's body limit.
    emails: list[Annotated[str, Field(max_length=320)]] = Field(max_length=500)


class UsersByIdBody(_Body):
    # As many as a portal's sub-clients (500) in one request.
    ids: list[uuid.UUID] = Field(max_length=500)


class PreferencesBody(_Body):
    """A person's Language and Time Zone; null (or left out): not chosen."""

    locale: str | None = Field(default=None, max_length=100)
    time_zone: str | None = Field(default=None, max_length=100)


class PasswordBody(_Body):
    password: str


class LoginBody(_Body):
    email: str = Field(max_length=1000)
    password: str = Field(max_length=PASSWORD_FIELD)  # as much as the gateway's forms read


class IssueBody(_Body):
    user_id: uuid.UUID


class LoginSettingsBody(_Body):
    login_redirect: bool


class ResetRequestBody(_Body):
    email: str = Field(max_length=1000)


class TokenQuery(_Body):
    token: str = Field(min_length=1, max_length=200)


class CreateKeyBody(_Body):
    name: str = Field(max_length=1000)
    scopes: list[str] = Field(max_length=20)
    created_by: uuid.UUID | None = None
    request_id: str | None = Field(default=None, min_length=1, max_length=100)


class VerifyKeyBody(_Body):
    key: str = Field(max_length=1000)


class ActivityQuery(_Body):
    actor: str | None = Field(default=None, max_length=100)
    action: str | None = Field(default=None, max_length=100)
    portal_id: uuid.UUID | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Cursor | None = None


class ResetConfirmBody(_Body):
    token: str = Field(min_length=1, max_length=200)
    password: str


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
        "locale": user.locale,
        "time_zone": user.time_zone,
    }


def issued_json(issued: handlers.IssuedSession) -> dict[str, Any]:
    return {
        "token": issued.token,
        "user": user_json(issued.user),
        "expires_at": issued.session.expires_at.isoformat(),
        "session": {
            "id": str(issued.session.id),
            "created_at": issued.session.created_at.isoformat(),
            "expires_at": issued.session.expires_at.isoformat(),
            "idle_expires_at": issued.idle_expires_at.isoformat(),
        },
    }


def key_json(key: repository.ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "name": key.name,
        "scopes": key.scopes,
        "prefix": key.prefix,
        "created_by": str(key.created_by) if key.created_by else None,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def activity_json(entry: ActivityEntry) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "occurred_at": entry.occurred_at.isoformat(),
        "action": entry.action,
        "actor": {"type": entry.actor_type, "id": entry.actor_id, "name": entry.actor_name},
        "object": {"type": entry.object_type, "id": entry.object_id, "label": entry.object_label},
        "portal_id": str(entry.portal_id) if entry.portal_id else None,
        "details": entry.details,
    }


def _user_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "user_id", NotFound("No user has this id.", code="user_not_found"))


def _deps(request: web.Request) -> handlers.Deps:
    return request.app[DEPS]


# --- users -------------------------------------------------------------------------------
async def create_user(request: web.Request) -> web.Response:
    body = await read_json(request, CreateUserBody)
    user = await handlers.create_user(_deps(request), body.email, body.password, body.role)
    return json_response(user_json(user), 201)


async def ensure_user(request: web.Request) -> web.Response:
    body = await read_json(request, EnsureUserBody)
    user, created = await handlers.ensure_user(
        _deps(request), body.email, body.password, body.invitation_id, body.role, body.locale
    )
    return json_response({"user": user_json(user), "created": created}, 201 if created else 200)


async def list_users(request: web.Request) -> web.Response:
    query = parse_query(request, ListUsersQuery)
    users, next_cursor = await handlers.list_users(
        _deps(request), query.q, query.cursor, query.limit
    )
    return json_response({"items": [user_json(u) for u in users], "next_cursor": next_cursor})


async def get_user(request: web.Request) -> web.Response:
    user = await handlers.get_user(_deps(request), _user_id(request))
    return json_response(user_json(user))


async def users_by_id(request: web.Request) -> web.Response:
    body = await read_json(request, UsersByIdBody)
    users = await handlers.get_users(_deps(request), body.ids)
    return json_response({"items": [user_json(u) for u in users]})


async def lookup_user(request: web.Request) -> web.Response:
    query = parse_query(request, LookupQuery)
    user = await handlers.lookup_user(_deps(request), query.email)
    return json_response(user_json(user))


async def lookup_users(request: web.Request) -> web.Response:
    body = await read_json(request, LookupManyBody)
    users = await handlers.lookup_users(_deps(request), body.emails)
    return json_response({"items": [{"id": str(u.id), "email": u.email} for u in users]})


async def change_password(request: web.Request) -> web.Response:
    body = await read_json(request, PasswordBody)
    await handlers.change_password(
        _deps(request),
        _user_id(request),
        body.password,
        keep_token=request.headers.get(SESSION_HEADER),
    )
    return web.Response(status=204)


async def set_preferences(request: web.Request) -> web.Response:
    body = await read_json(request, PreferencesBody)
    user = await handlers.set_preferences(
        _deps(request), _user_id(request), body.locale, body.time_zone
    )
    return json_response(user_json(user))


async def disable_user(request: web.Request) -> web.Response:
    user = await handlers.disable_user(_deps(request), _user_id(request))
    return json_response(user_json(user))


async def erase_user(request: web.Request) -> web.Response:
    user = await handlers.erase_user(_deps(request), _user_id(request))
    return json_response(user_json(user))


# --- sessions ----------------------------------------------------------------------------
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    issued = await handlers.login(_deps(request), body.email, body.password)
    return json_response(issued_json(issued), 201)


async def issue_session(request: web.Request) -> web.Response:
    body = await read_json(request, IssueBody)
    issued = await handlers.issue_session(_deps(request), body.user_id)
    return json_response(issued_json(issued), 201)


async def current_session(request: web.Request) -> web.Response:
    current = await handlers.current_session(_deps(request), request.headers.get(SESSION_HEADER))
    session = current.session
    return json_response(
        {
            "user": user_json(current.user),
            "session": {
                "id": str(session.id),
                "created_at": session.created_at.isoformat(),
                "expires_at": session.expires_at.isoformat(),
                "idle_expires_at": current.idle_expires_at.isoformat(),
            },
        }
    )


async def logout(request: web.Request) -> web.Response:
    await handlers.logout(_deps(request), request.headers.get(SESSION_HEADER))
    return web.Response(status=204)


# --- login settings ----------------------------------------------------------------------
async def get_login_settings(request: web.Request) -> web.Response:
    return json_response({"login_redirect": await handlers.get_login_redirect(_deps(request))})


async def put_login_settings(request: web.Request) -> web.Response:
    body = await read_json(request, LoginSettingsBody)
    value = await handlers.set_login_redirect(_deps(request), body.login_redirect)
    return json_response({"login_redirect": value})


# --- password resets ---------------------------------------------------------------------
async def request_reset(request: web.Request) -> web.Response:
    """Answers before looking the email up: a known address (a reset row and a mail job to
    write) and an unknown one (nothing) then take the same time to answer."""
    body = await read_json(request, ResetRequestBody)
    request.app[BACKGROUND].run(
        handlers.request_password_reset(_deps(request), body.email), name="password_reset"
    )
    return json_response({"status": "accepted"}, 202)


async def validate_reset(request: web.Request) -> web.Response:
    # Looked up by its hash: a NUL in it is a link we never sent (reset_invalid).
    query = parse_query(request, TokenQuery, nul_ok=True)
    email = await handlers.validate_reset(_deps(request), query.token)
    return json_response({"email": email})


async def confirm_reset(request: web.Request) -> web.Response:
    body = await read_json(request, ResetConfirmBody)
    await handlers.confirm_reset(_deps(request), body.token, body.password)
    return web.Response(status=204)


async def enable_user(request: web.Request) -> web.Response:
    user = await handlers.enable_user(_deps(request), _user_id(request))
    return json_response(user_json(user))


async def set_role(request: web.Request) -> web.Response:
    body = await read_json(request, RoleBody)
    user = await handlers.set_role(_deps(request), _user_id(request), body.role)
    return json_response(user_json(user))


# --- integration keys ----------------------------------------------------------------------
async def create_api_key(request: web.Request) -> web.Response:
    body = await read_json(request, CreateKeyBody)
    created, key = await handlers.create_api_key(
        _deps(request), body.name, body.scopes, body.created_by, body.request_id
    )
    return json_response({**key_json(created), "key": key}, 201)


async def list_api_keys(request: web.Request) -> web.Response:
    keys = await handlers.list_api_keys(_deps(request))
    return json_response({"items": [key_json(key) for key in keys]})


async def revoke_api_key(request: web.Request) -> web.Response:
    no_key = NotFound("There is no live key with this id.", code="key_not_found")
    key_id = path_uuid(request, "key_id", no_key)
    await handlers.revoke_api_key(_deps(request), key_id)
    return web.Response(status=204)


async def verify_api_key(request: web.Request) -> web.Response:
    body = await read_json(request, VerifyKeyBody)
    return json_response(key_json(await handlers.verify_api_key(_deps(request), body.key)))


# --- the Activity log -----------------------------------------------------------------------
async def list_activity(request: web.Request) -> web.Response:
    query = parse_query(request, ActivityQuery)
    entries, next_cursor = await handlers.list_activity(
        _deps(request),
        actor=query.actor or None,
        action=query.action or None,
        portal_id=query.portal_id,
        cursor=query.cursor,
        limit=query.limit,
    )
    return json_response({"items": [activity_json(e) for e in entries], "next_cursor": next_cursor})


async def activity_actors(request: web.Request) -> web.Response:
    return json_response({"items": await handlers.activity_actors(_deps(request))})


# Who may call each route (libs/common/web.py require_service_proof; docs/internal-api.md
# "Who may call what"). Sessions, passwords and users answer only the gateway; invitations
# looks up whether an invited email already has an account.
ROUTES = (
    Route("POST", "/users", create_user, GATEWAY),
    Route("POST", "/users/ensure", ensure_user, GATEWAY),
    Route("GET", "/users", list_users, GATEWAY),
    # Registered before /users/{user_id} so "lookup" is never read as an id.
    Route("GET", "/users/lookup", lookup_user, frozenset({"invitations"})),
    Route("POST", "/users/lookup", lookup_users, frozenset({"invitations"})),
    Route("POST", "/users/by-id", users_by_id, GATEWAY),
    Route("GET", "/users/{user_id}", get_user, GATEWAY),
    Route("POST", "/users/{user_id}/password", change_password, GATEWAY),
    Route("POST", "/users/{user_id}/disable", disable_user, GATEWAY),
    Route("POST", "/users/{user_id}/enable", enable_user, GATEWAY),
    Route("POST", "/users/{user_id}/erase", erase_user, GATEWAY),
    Route("PUT", "/users/{user_id}/role", set_role, GATEWAY),
    Route("PUT", "/users/{user_id}/preferences", set_preferences, GATEWAY),
    Route("POST", "/sessions", login, GATEWAY),
    Route("POST", "/sessions/issue", issue_session, GATEWAY),
    Route("GET", "/sessions/current", current_session, GATEWAY),
    Route("DELETE", "/sessions/current", logout, GATEWAY),
    Route("GET", "/settings/login", get_login_settings, GATEWAY),
    Route("PUT", "/settings/login", put_login_settings, GATEWAY),
    Route("POST", "/password-resets", request_reset, GATEWAY),
    Route("GET", "/password-resets/validate", validate_reset, GATEWAY),
    Route("POST", "/password-resets/confirm", confirm_reset, GATEWAY),
    Route("POST", "/api-keys", create_api_key, GATEWAY),
    Route("GET", "/api-keys", list_api_keys, GATEWAY),
    Route("DELETE", "/api-keys/{key_id}", revoke_api_key, GATEWAY),
    Route("POST", "/api-keys/verify", verify_api_key, GATEWAY),
    Route("GET", "/activity", list_activity, GATEWAY),
    Route("GET", "/activity/actors", activity_actors, GATEWAY),
)
CALLERS: dict[str, frozenset[str]] = callers_of(ROUTES, openapi=True)
