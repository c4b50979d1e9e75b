"""The public shapes of /api/v1/webhooks (pydantic): the routes in webhooks.py declare them,
and the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.broker import WEBHOOK_EVENTS, WebhookEvent
from libs.common.cursor import Cursor

EventType = WebhookEvent
EVENT_TYPES = WEBHOOK_EVENTS


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2000, description="http:// or https://")]
    events: Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]


class Webhook(BaseModel):
    id: str
    url: str
    events: list[EventType]
    created_at: str


class WebhookWithSecret(Webhook):
    """Answered when the endpoint is added or its secret rotated: the only time the
    signing secret is shown."""

    secret: Annotated[str, Field(pattern=r"^whsec_", description="shown only this once")]


class WebhookList(BaseModel):
    items: list[Webhook]


class WebhookDelivery(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: EventType
    status: Literal["queued", "sending", "delivered", "failed"]
    attempts: int
    response_code: int | None
    duration_ms: int | None
    error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    created_at: str


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None
