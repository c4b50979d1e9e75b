"""Integration keys for the JSON API: Settings → API Keys and /api/v1/keys, for
administrators (and the bootstrap key) only: security.API_SCOPES gives these routes no
scope. Identity makes, stores (hashed) and verifies them; a key is shown once, in the
answer that made it."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import DomainError
from libs.common.web import json_response, read_json

from ..answers import ApiKeyAnswer, CreatedApiKey
from ..contracts import ApiKeyCreated, ApiKeyList
from ..domain import KEY_SCOPES, parse_uuid
from ..rendering import current_user, form_str, render, see_other
from ..state import UPSTREAM
from .api import API

ID = "{id:[0-9a-fA-F-]{36}}"

routes = web.RouteTableDef()


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked by identity, whose refusals name the problem (invalid_key_name, invalid_scopes).
    name: Annotated[str, Field(max_length=1000, description="1 to 100 characters")]
    scopes: Annotated[
        list[str],
        Field(max_length=20, description="at least one of: " + ", ".join(KEY_SCOPES)),
    ]


def _public(key: ApiKeyAnswer) -> dict[str, Any]:
    shown = ("id", "name", "scopes", "prefix", "created_at", "last_used_at")
    return {field: key.get(field) for field in shown}


def _creator(request: web.Request) -> str | None:
    user = current_user(request)
    return str(user["id"]) if user else None


# --- API (declared on the API's table: security.ADMIN_ONLY_API lists them) -------------
@API.post(
    "/keys",
    "Create an integration key (administrators and the bootstrap key)",
    body=KeyBody,
    response=ApiKeyCreated,
    status=201,
    errors=["422 invalid_key_name", "422 invalid_character", "422 invalid_scopes"],
)
async def create_key(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, KeyBody)
    made = await request.app[UPSTREAM].identity.create_api_key(
        body.name, body.scopes, _creator(request)
    )
    return json_response(
        {**_public(made), "key": made["key"]}, status=201, headers={"Cache-Control": "no-store"}
    )


@API.get("/keys", "The live integration keys (never the keys themselves)", response=ApiKeyList)
async def list_keys(request: web.Request) -> web.StreamResponse:
    keys = await request.app[UPSTREAM].identity.list_api_keys()
    return json_response({"items": [_public(key) for key in keys]})


@API.delete(
    "/keys/{id}",
    "Revoke an integration key: it stops at once",
    status=204,
    errors=["404 key_not_found"],
)
async def revoke_key(request: web.Request) -> web.StreamResponse:
    await request.app[UPSTREAM].identity.revoke_api_key(request.match_info["id"])
    return web.Response(status=204)


# --- Settings → API Keys ---------------------------------------------------------------
async def _page(
    request: web.Request,
    *,
    created: CreatedApiKey | None = None,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    keys = await request.app[UPSTREAM].identity.list_api_keys()
    context = {
        # A fresh id for each Create Key form: sent twice, it makes one key.
        "request_id": secrets.token_urlsafe(16),
        "keys": keys,
        "scopes": KEY_SCOPES,
        "created": created,
        "form": form or {"name": "", "scopes": []},
        "error": error,
        "notice": notice,
    }
    response = render(request, "admin/api_keys.html", context, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/admin/settings/api-keys")
async def key_page(request: web.Request) -> web.StreamResponse:
    return await _page(request)


@routes.post("/admin/settings/api-keys")
async def create_key_form(request: web.Request) -> web.StreamResponse:
    posted = await request.post()
    name = form_str(posted, "name", 200)
    scopes = [value for value in posted.getall("scopes", []) if isinstance(value, str)][:20]
    request_id = form_str(posted, "request_id", 100) or None
    try:
        made = await request.app[UPSTREAM].identity.create_api_key(
            name, scopes, _creator(request), request_id
        )
    except DomainError as exc:
        if exc.code == "key_already_created":
            # The same form again (a reload after Create Key): no second key.
            return await _page(request, notice=exc.message, status=409)
        if exc.status != 422:
            raise
        form = {"name": name, "scopes": scopes}
        return await _page(request, form=form, error=exc.message, status=422)
    # Shown in this answer only (never through a redirect or a cookie).
    return await _page(request, created=made, status=201)


@routes.post(f"/admin/settings/api-keys/{ID}/revoke")
async def revoke_key_form(request: web.Request) -> web.StreamResponse:
    await request.post()
    key_id = parse_uuid(request.match_info["id"]) or ""
    keys = {key["id"]: key for key in await request.app[UPSTREAM].identity.list_api_keys()}
    await request.app[UPSTREAM].identity.revoke_api_key(key_id)
    revoked = keys.get(key_id)
    name = revoked["name"] if revoked else ""
    return see_other(request, "/admin/settings/api-keys", flash="key_revoked", email=name)
