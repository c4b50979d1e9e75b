"""The mailer API's OpenAPI 3.1 document (webhooks and branding), built from the pydantic
models the views parse with, as the other services' are."""

from __future__ import annotations

from typing import Any

from libs.common.openapi import (
    NULL_TIME,
    TIME,
    UUID,
    Operation,
    openapi_route,
    page_of,
    path_parameter,
)

from . import api
from .webhooks.domain import EVENT_TYPES

EVENTS = {"type": "array", "items": {"type": "string", "enum": sorted(EVENT_TYPES)}}
ENDPOINT_FIELDS: dict[str, Any] = {
    "id": UUID,
    "url": {"type": "string"},
    "events": EVENTS,
    "created_at": TIME,
}
ENDPOINT = {"type": "object", "properties": ENDPOINT_FIELDS}
WITH_SECRET = {
    "type": "object",
    "description": "the endpoint and its signing secret (the only time the secret is shown)",
    "properties": {**ENDPOINT_FIELDS, "secret": {"type": "string"}},
}
DELIVERY = {
    "type": "object",
    "properties": {
        "id": UUID,
        "endpoint_id": UUID,
        "event_id": UUID,
        "event_type": {"type": "string"},
        "status": {"type": "string"},
        "attempts": {"type": "integer"},
        "response_code": {"type": ["integer", "null"]},
        "duration_ms": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "last_attempt_at": NULL_TIME,
        "next_attempt_at": NULL_TIME,
        "delivered_at": NULL_TIME,
        "created_at": TIME,
    },
}
DELIVERIES = page_of(DELIVERY)
ENDPOINTS_WITH_LOGS = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    **ENDPOINT_FIELDS,
                    "deliveries": {
                        "type": "array",
                        "items": DELIVERY,
                        "description": "with ?deliveries=N: its N newest, newest first",
                    },
                },
            },
        }
    },
}
BRANDING = {
    "type": "object",
    "description": "empty strings: not set",
    "properties": {
        "agency_name": {"type": "string"},
        "accent_colour": {"type": "string"},
        "reply_to": {"type": "string"},
        "footer_text": {"type": "string"},
        "logo_etag": {"type": ["string", "null"]},
        "logo_type": {"type": ["string", "null"]},
        "default_locale": {"type": "string", "enum": ["en", "de", "fr", "es"]},
        "time_zone": {"type": "string"},
    },
}
LOGO = {
    "type": "object",
    "properties": {
        "content_type": {"type": "string"},
        "etag": {"type": "string"},
        "content": {"type": "string", "description": "base64"},
    },
}
ID = path_parameter("id")
DELIVERY_ID = path_parameter("delivery_id")
WEBHOOK_NOT_FOUND = ["404 webhook_not_found"]
BRANDING_REFUSED = [
    "422 invalid_agency_name", "422 invalid_accent_colour", "422 invalid_reply_to",
    "422 invalid_footer_text", "422 invalid_default_locale", "422 invalid_time_zone",
]  # fmt: skip

OPERATIONS: list[Operation] = [
    ("post", "/webhooks", "Add a webhook endpoint", api.EndpointBody, None, [], 201,
     WITH_SECRET, ["422 webhook_target_refused (error.problem, error.host)"]),
    ("get", "/webhooks", "The webhook endpoints (never a secret), with their newest deliveries"
     " if asked", None, api.EndpointsQuery, [], 200, ENDPOINTS_WITH_LOGS, ["422"]),
    ("delete", "/webhooks/{id}", "Delete an endpoint and its deliveries", None, None, [ID],
     204, None, WEBHOOK_NOT_FOUND),
    ("post", "/webhooks/{id}/rotate-secret", "A new secret; the old one still signs a while",
     None, None, [ID], 200, WITH_SECRET, WEBHOOK_NOT_FOUND),
    ("get", "/webhooks/{id}/deliveries", "An endpoint's delivery log, newest first", None,
     api.DeliveryQuery, [ID], 200, DELIVERIES, [*WEBHOOK_NOT_FOUND, "422 invalid_cursor"]),
    ("post", "/webhooks/{id}/deliveries/{delivery_id}/redeliver", "Send a delivery again",
     None, None, [ID, DELIVERY_ID], 202, DELIVERY,
     [*WEBHOOK_NOT_FOUND, "404 webhook_delivery_not_found"]),
    ("get", "/branding", "Settings → Branding", None, None, [], 200, BRANDING, []),
    ("put", "/branding", "Change the branding: fields left out are unchanged, \"\" unsets",
     api.BrandingBody, None, [], 200, BRANDING, BRANDING_REFUSED),
    ("put", "/branding/logo", "Upload the logo (PNG or JPEG, base64)", api.LogoBody, None, [],
     200, BRANDING, ["422 invalid_logo", "413 body_too_large"]),
    ("delete", "/branding/logo", "Remove the logo", None, None, [], 200, BRANDING, []),
    ("get", "/branding/logo", "The logo", None, None, [], 200, LOGO, ["404 logo_not_found"]),
]  # fmt: skip


openapi = openapi_route("ClientPress mailer (internal)", OPERATIONS)
