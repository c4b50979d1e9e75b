"""Typed app state shared by the gateway's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .cache import GatewayCache
from .domain import SlidingWindow
from .settings import GatewaySettings
from .upstream import Upstream


@dataclass(frozen=True)
class Limiters:
    per_ip: SlidingWindow
    per_email: SlidingWindow


SETTINGS = web.AppKey("gateway_settings", GatewaySettings)
UPSTREAM = web.AppKey("upstream", Upstream)
LIMITERS = web.AppKey("limiters", Limiters)
CACHE = web.AppKey("cache", GatewayCache)

SESSION_COOKIE = "cp_session"
CSRF_COOKIE = "cp_csrf"
FLASH_COOKIE = "cp_flash"


@dataclass
class RequestState:
    """What the security middlewares learned about one request."""

    user: dict[str, Any] | None = None
    csrf: str = ""
    csrf_new: bool = False
    api_key: bool = False
    clear_session: bool = False
    session_set: bool = False


STATE = web.RequestKey("gateway_state", RequestState)


def req_state(request: web.Request) -> RequestState:
    state = request.get(STATE)
    if state is None:
        state = RequestState()
        request[STATE] = state
    return state
