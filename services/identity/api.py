"""Thin HTTP views over the identity handlers (docs/internal-api.md, "identity")."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import NotFound
from libs.common.web import json_response, parse_query, read_json

from . import handlers
from .domain import Role, User

DEPS = web.AppKey("identity_deps", handlers.Deps)
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


class ListUsersQuery(_Body):
    q: str | None = Field(default=None, max_length=320)
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=500)


class LookupQuery(_Body):
    email: str = Field(max_length=1000)


class PasswordBody(_Body):
    password: str
    end_sessions: bool = False


class LoginBody(_Body):
    email: str = Field(max_length=1000)
    password: str = Field(max_length=4096)


class IssueBody(_Body):
    user_id: uuid.UUID


class LoginSettingsBody(_Body):
    login_redirect: bool


class ResetRequestBody(_Body):
    email: str = Field(max_length=1000)


class TokenQuery(_Body):
    token: str = Field(min_length=1, max_length=200)


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


def _user_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["user_id"])
    except ValueError:
        raise NotFound("No user has this id.", code="user_not_found") from None


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
        _deps(request), body.email, body.password, body.invitation_id
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


async def lookup_user(request: web.Request) -> web.Response:
    query = parse_query(request, LookupQuery)
    user = await handlers.lookup_user(_deps(request), query.email)
    return json_response(user_json(user))


async def change_password(request: web.Request) -> web.Response:
    body = await read_json(request, PasswordBody)
    await handlers.change_password(
        _deps(request),
        _user_id(request),
        body.password,
        end_sessions=body.end_sessions,
        keep_token=request.headers.get(SESSION_HEADER),
    )
    return web.Response(status=204)


async def disable_user(request: web.Request) -> web.Response:
    user = await handlers.disable_user(_deps(request), _user_id(request))
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
    body = await read_json(request, ResetRequestBody)
    await handlers.request_password_reset(_deps(request), body.email)
    return json_response({"status": "accepted"}, 202)


async def validate_reset(request: web.Request) -> web.Response:
    query = parse_query(request, TokenQuery)
    email = await handlers.validate_reset(_deps(request), query.token)
    return json_response({"email": email})


async def confirm_reset(request: web.Request) -> web.Response:
    body = await read_json(request, ResetConfirmBody)
    await handlers.confirm_reset(_deps(request), body.token, body.password)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/users", create_user)
    r.add_post("/users/ensure", ensure_user)
    r.add_get("/users", list_users)
    # Registered before /users/{user_id} so "lookup" is never read as an id.
    r.add_get("/users/lookup", lookup_user)
    r.add_get("/users/{user_id}", get_user)
    r.add_post("/users/{user_id}/password", change_password)
    r.add_post("/users/{user_id}/disable", disable_user)
    r.add_post("/sessions", login)
    r.add_post("/sessions/issue", issue_session)
    r.add_get("/sessions/current", current_session)
    r.add_delete("/sessions/current", logout)
    r.add_get("/settings/login", get_login_settings)
    r.add_put("/settings/login", put_login_settings)
    r.add_post("/password-resets", request_reset)
    r.add_get("/password-resets/validate", validate_reset)
    r.add_post("/password-resets/confirm", confirm_reset)
