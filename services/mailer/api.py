"""The internal HTTP API (docs/internal-api.md, "mailer"): webhook endpoints, their
delivery log and Redeliver, for the gateway's /api/v1/webhooks and Settings → Webhooks."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.broker import WebhookEvent
from libs.common.cursor import Cursor
from libs.common.errors import InvalidInput, NotFound
from libs.common.service_auth import GATEWAY
from libs.common.web import Route, callers_of, json_response, parse_query, path_uuid, read_json

from .branding import handlers as branding
from .branding.cache import BrandingSource
from .branding.domain import MAX_LOGO_BYTES, Branding
from .handlers import Deps
from .webhooks import handlers
from .webhooks.domain import EVENT_TYPES, MAX_URL_LENGTH

DEPS = web.AppKey("mailer_deps", Deps)
BRANDING = web.AppKey("branding", BrandingSource)

EventType = WebhookEvent


class EndpointBody(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))


class EndpointsQuery(BaseModel):
    # Each endpoint's newest deliveries in the same answer (Settings → Webhooks).
    deliveries: int = Field(default=0, ge=0, le=50)


class DeliveryQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Cursor | None = None


def endpoint_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "events": list(row["events"]),
        "created_at": row["created_at"].isoformat(),
    }


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "endpoint_id": str(row["endpoint_id"]),
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "response_code": row["response_code"],
        "duration_ms": row["duration_ms"],
        "error": row["last_error"],
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] == "queued" else None,
        "delivered_at": _iso(row["delivered_at"]),
        "created_at": row["created_at"].isoformat(),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    code = f"{what.replace(' ', '_')}_not_found"
    return path_uuid(request, name, NotFound(f"There is no such {what}.", code=code))


async def add_endpoint(request: web.Request) -> web.Response:
    body = await read_json(request, EndpointBody)
    row, secret = await handlers.add_endpoint(request.app[DEPS], body.url, list(body.events))
    return json_response({**endpoint_json(row), "secret": secret}, 201)


async def list_endpoints(request: web.Request) -> web.Response:
    query = parse_query(request, EndpointsQuery)
    rows = await handlers.list_endpoints(request.app[DEPS], query.deliveries)
    items = [
        {**endpoint_json(r), "deliveries": [delivery_json(d) for d in r["deliveries"]]}
        if "deliveries" in r
        else endpoint_json(r)
        for r in rows
    ]
    return json_response({"items": items})


async def delete_endpoint(request: web.Request) -> web.Response:
    await handlers.delete_endpoint(request.app[DEPS], _uuid(request, "id", "webhook"))
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    row, secret = await handlers.rotate_secret(request.app[DEPS], _uuid(request, "id", "webhook"))
    return json_response({**endpoint_json(row), "secret": secret})


async def list_deliveries(request: web.Request) -> web.Response:
    query = parse_query(request, DeliveryQuery)
    rows, next_cursor = await handlers.deliveries(
        request.app[DEPS], _uuid(request, "id", "webhook"), query.limit, query.cursor
    )
    return json_response({"items": [delivery_json(r) for r in rows], "next_cursor": next_cursor})


async def redeliver(request: web.Request) -> web.Response:
    row = await handlers.redeliver(
        request.app[DEPS],
        _uuid(request, "id", "webhook"),
        _uuid(request, "delivery_id", "webhook delivery"),
    )
    return json_response(delivery_json(row), 202)


class BrandingBody(BaseModel):
    """Fields left out are unchanged; an empty string unsets one."""

    model_config = ConfigDict(extra="forbid")

    agency_name: str | None = Field(default=None, max_length=1000)
    accent_colour: str | None = Field(default=None, max_length=100)
    reply_to: str | None = Field(default=None, max_length=1000)
    footer_text: str | None = Field(default=None, max_length=5000)
    # Checked by the handler: a clear invalid_default_locale / invalid_time_zone.
    default_locale: str | None = Field(default=None, max_length=100)
    time_zone: str | None = Field(default=None, max_length=100)


class LogoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Base64 of the file as uploaded; its kind is told by its first bytes, not a name.
    content: str = Field(min_length=1, max_length=(MAX_LOGO_BYTES * 4) // 3 + 8)


def branding_json(value: Branding) -> dict[str, Any]:
    return {
        "agency_name": value.agency_name,
        "accent_colour": value.accent_colour,
        "reply_to": value.reply_to,
        "footer_text": value.footer_text,
        "logo_etag": value.logo_etag or None,
        "logo_type": value.logo_type or None,
        "default_locale": value.default_locale,
        "time_zone": value.time_zone,
    }


async def get_branding(request: web.Request) -> web.Response:
    value = await branding.current(request.app[DEPS])
    return json_response(branding_json(value))


async def put_branding(request: web.Request) -> web.Response:
    body = await read_json(request, BrandingBody)
    value = await branding.update(request.app[DEPS], body.model_dump())
    request.app[BRANDING].forget()
    return json_response(branding_json(value))


async def put_logo(request: web.Request) -> web.Response:
    body = await read_json(request, LogoBody, limit=(MAX_LOGO_BYTES * 4) // 3 + 1024)
    try:
        content = base64.b64decode(body.content, validate=True)
    except ValueError:  # binascii.Error, and any character outside ASCII
        raise InvalidInput("The logo must be sent as base64.", code="invalid_logo") from None
    value = await branding.set_logo(request.app[DEPS], content)
    request.app[BRANDING].forget()
    return json_response(branding_json(value))


async def delete_logo(request: web.Request) -> web.Response:
    value = await branding.remove_logo(request.app[DEPS])
    request.app[BRANDING].forget()
    return json_response(branding_json(value))


async def get_logo(request: web.Request) -> web.Response:
    found = await branding.logo(request.app[DEPS])
    return json_response(
        {
            "content_type": found["logo_type"],
            "etag": found["logo_etag"],
            "content": base64.b64encode(found["logo"]).decode(),
        }
    )


# Who may call each route (libs/common/web.py require_service_proof; docs/internal-api.md
# "Who may call what"): only the gateway; the OpenAPI document (openapi.py), any service.
ROUTES = (
    Route("POST", "/webhooks", add_endpoint, GATEWAY),
    Route("GET", "/webhooks", list_endpoints, GATEWAY),
    Route("DELETE", "/webhooks/{id}", delete_endpoint, GATEWAY),
    Route("POST", "/webhooks/{id}/rotate-secret", rotate_secret, GATEWAY),
    Route("GET", "/webhooks/{id}/deliveries", list_deliveries, GATEWAY),
    Route("POST", "/webhooks/{id}/deliveries/{delivery_id}/redeliver", redeliver, GATEWAY),
    Route("GET", "/branding", get_branding, GATEWAY),
    Route("PUT", "/branding", put_branding, GATEWAY),
    Route("PUT", "/branding/logo", put_logo, GATEWAY),
    Route("DELETE", "/branding/logo", delete_logo, GATEWAY),
    Route("GET", "/branding/logo", get_logo, GATEWAY),
)
CALLERS: dict[str, frozenset[str]] = callers_of(ROUTES, openapi=True)
