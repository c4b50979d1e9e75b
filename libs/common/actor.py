"""Who made a change: the person or integration key behind a request (docs/design.md
"Activity").

The gateway, which knows the logged-in user or the key, binds the actor for the request;
every internal call it makes carries it in ``X-ClientPress-Actor``; a service accepts
that header only from a caller proven to be the gateway (libs/common/web.py) and binds
it in turn, and ``make_event`` stamps it on every event written while handling that
request. Work nobody asked for (sweeps, reminders, consumers) has no actor."""

from __future__ import annotations

import base64
import binascii
from contextvars import ContextVar
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ACTOR_HEADER = "X-ClientPress-Actor"
# A header value far above any real actor's: a bigger one is refused, not parsed.
MAX_HEADER = 2048

ActorType = Literal["user", "key"]


class Actor(BaseModel):
    """``user``: a staff member (id = their user id, name = their email); ``key``: an
    integration key (id = its id, or ``bootstrap`` for GATEWAY_API_KEY; name = its name)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: ActorType
    id: str = Field(min_length=1, max_length=100)
    name: str = Field(max_length=320)


actor_var: ContextVar[Actor | None] = ContextVar("actor", default=None)


def current_actor() -> Actor | None:
    return actor_var.get()


def set_actor(actor: Actor | None) -> None:
    actor_var.set(actor)


def encode_actor(actor: Actor) -> str:
    """The header's value: base64url of the JSON (an email may hold any character)."""
    return base64.urlsafe_b64encode(orjson.dumps(actor.model_dump())).decode().rstrip("=")


def decode_actor(value: str | None) -> Actor | None:
    """The actor in a header value, or None when it is absent or malformed (a change is
    never refused for its label)."""
    if not value or len(value) > MAX_HEADER:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return Actor.model_validate(orjson.loads(raw))
    except (binascii.Error, ValueError, orjson.JSONDecodeError, ValidationError):
        return None
