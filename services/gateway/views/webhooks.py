"""Webhooks: /api/v1/webhooks and the Settings → Webhooks page, both forwarded to the
mailer, which keeps the endpoints and delivers (docs/internal-api.md "mailer"). The
security middlewares gate both paths (administrators, or the API key for /api)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from libs.common.errors import InvalidInput, Unavailable
from libs.common.web import describe_validation, json_response, parse_query, read_json

from ..answers import WebhookWithSecretAnswer
from ..i18n import N_, gettext
from ..rendering import form_str, page_language, render, see_other
from ..state import UPSTREAM
from ..upstream import Webhooks
from ..webhook_models import (
    EVENT_TYPES,
    DeliveryQuery,
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookList,
    WebhookWithSecret,
)
from .api import API

ID = "{id:[0-9a-fA-F-]{36}}"
DELIVERY_ID = "{delivery_id:[0-9a-fA-F-]{36}}"
PAGE = "/admin/settings/webhooks"
# Deliveries shown per endpoint on the page; the API pages through all of them.
LOG_ROWS = 20

routes = web.RouteTableDef()


def _hooks(request: web.Request) -> Webhooks:
    return request.app[UPSTREAM].hooks()


# --- /api/v1/webhooks (declared on the API's table: they are in docs/openapi.json) -----
@API.get("/webhooks", "List webhook endpoints", response=WebhookList)
async def list_endpoints(request: web.Request) -> web.StreamResponse:
    return json_response(await _hooks(request).find())


@API.post(
    "/webhooks",
    "Add a webhook endpoint (the answer shows its signing secret, this once only)",
    body=WebhookCreate,
    response=WebhookWithSecret,
    status=201,
    errors=["422 webhook_target_refused", "503 broker_unavailable"],
)
async def add_endpoint(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, WebhookCreate)
    events: list[str] = list(dict.fromkeys(body.events))
    return json_response(await _hooks(request).add(body.url, events), status=201)


@API.delete(
    "/webhooks/{id}", "Delete a webhook endpoint", status=204, errors=["404 webhook_not_found"]
)
async def delete_endpoint(request: web.Request) -> web.StreamResponse:
    await _hooks(request).delete(request.match_info["id"])
    return web.Response(status=204)


@API.post(
    "/webhooks/{id}/rotate-secret",
    "New signing secret (shown this once); the old one keeps signing for an overlap",
    response=WebhookWithSecret,
    errors=["404 webhook_not_found"],
)
async def rotate_secret(request: web.Request) -> web.StreamResponse:
    return json_response(await _hooks(request).rotate_secret(request.match_info["id"]))


@API.get(
    "/webhooks/{id}/deliveries",
    "The endpoint's delivery log, newest first",
    query=DeliveryQuery,
    response=WebhookDeliveryPage,
    errors=["404 webhook_not_found"],
)
async def deliveries(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, DeliveryQuery)
    return json_response(
        await _hooks(request).deliveries(request.match_info["id"], q.limit, q.cursor)
    )


@API.post(
    "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    "Send a delivery again (same webhook-id, fresh signature and retry horizon)",
    response=WebhookDelivery,
    status=202,
    errors=["404 webhook_not_found", "404 webhook_delivery_not_found"],
)
async def redeliver(request: web.Request) -> web.StreamResponse:
    hooks = _hooks(request)
    delivery = await hooks.redeliver(request.match_info["id"], request.match_info["delivery_id"])
    return json_response(delivery, status=202)


# --- Settings → Webhooks --------------------------------------------------------------
async def _page(
    request: web.Request,
    *,
    secret: WebhookWithSecretAnswer | None = None,
    errors: dict[str, str] | None = None,
    form: dict[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    hooks = _hooks(request)
    # Every endpoint with its log in one request, not one an endpoint.
    endpoints = (await hooks.with_logs(LOG_ROWS))["items"]
    context = {
        "endpoints": endpoints,
        "event_types": EVENT_TYPES,
        "secret": secret,
        "errors": errors or {},
        "form": form or {"url": "", "events": []},
    }
    return render(request, "admin/webhooks.html", context, status=status)


# The mailer's refusals, by what it names as the problem, in the reader's language.
REFUSALS = {
    "not_http": N_("The URL must be one http:// or https:// address."),
    "credentials": N_("The URL must not carry a user name or password."),
    "port": N_("The URL's port is not a number from 1 to 65535."),
    "unresolvable": N_("%(host)s does not resolve."),
    "private": N_(
        "%(host)s is a loopback, private or link-local address; webhooks go only to public"
        " addresses."
    ),
}
NO_BROKER = N_(
    "The message broker can't be reached, so the endpoint would receive nothing. Try again"
    " in a moment."
)


def _refusal(request: web.Request, exc: InvalidInput | Unavailable) -> str:
    page_language(request)  # the words below in the reader's language
    if exc.code == "broker_unavailable":
        return gettext(NO_BROKER)
    words = REFUSALS.get(str(exc.details.get("problem")))
    if exc.code != "webhook_target_refused" or words is None:
        return exc.message
    return gettext(words, host=str(exc.details.get("host", "")))


@routes.get(PAGE)
async def webhooks_page(request: web.Request) -> web.StreamResponse:
    return await _page(request)


@routes.post(PAGE)
async def add_from_page(request: web.Request) -> web.StreamResponse:
    posted = await request.post()
    url = form_str(posted, "url", 2000)
    events = [e for e in posted.getall("events", []) if isinstance(e, str)]
    form = {"url": url, "events": events}
    try:
        body = WebhookCreate.model_validate({"url": url, "events": events})
    except ValidationError as exc:
        field = "events" if any(e["loc"][:1] == ("events",) for e in exc.errors()) else "url"
        message = (
            N_("Choose at least one event.") if field == "events" else describe_validation(exc)
        )
        return await _page(request, errors={field: message}, form=form, status=422)
    try:
        added = await _hooks(request).add(body.url, list[str](dict.fromkeys(body.events)))
    except (InvalidInput, Unavailable) as exc:
        # A refused target, or no broker to bind its events (the mailer saved nothing).
        errors = {"url": _refusal(request, exc)}
        return await _page(request, errors=errors, form=form, status=exc.status)
    # The secret is in this answer only: shown now, never again (no redirect to lose it).
    return await _page(request, secret=added)


@routes.post(f"{PAGE}/{ID}/rotate-secret")
async def rotate_from_page(request: web.Request) -> web.StreamResponse:
    await request.post()
    rotated = await _hooks(request).rotate_secret(request.match_info["id"])
    return await _page(request, secret=rotated)


@routes.post(f"{PAGE}/{ID}/delete")
async def delete_from_page(request: web.Request) -> web.StreamResponse:
    await request.post()
    await _hooks(request).delete(request.match_info["id"])
    return see_other(request, PAGE, flash="webhook_deleted")


@routes.post(f"{PAGE}/{ID}/deliveries/{DELIVERY_ID}/redeliver")
async def redeliver_from_page(request: web.Request) -> web.StreamResponse:
    await request.post()
    await _hooks(request).redeliver(request.match_info["id"], request.match_info["delivery_id"])
    return see_other(request, PAGE, flash="webhook_redelivered")
