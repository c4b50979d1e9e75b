"""Typed app state shared by the gateway's modules."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .answers import BrandingAnswer, UserAnswer
from .cache import GatewayCache
from .domain import Network
from .limits import RateLimits
from .settings import GatewaySettings
from .upstream import Upstream

SETTINGS = web.AppKey("gateway_settings", GatewaySettings)
UPSTREAM = web.AppKey("upstream", Upstream)
LIMITS = web.AppKey("limits", RateLimits)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[Network, ...])
CACHE = web.AppKey("cache", GatewayCache)


@dataclass
class RequestState:
    """What the security middlewares learned about one request."""

    user: UserAnswer | None = None
    csrf: str = ""
    csrf_new: bool = False
    api_key: bool = False  # a valid key came with this /api request
    key_name: str | None = None  # its name ("bootstrap" for GATEWAY_API_KEY)
    key_id: str | None = None  # its id ("bootstrap" for GATEWAY_API_KEY)
    key_scopes: frozenset[str] = frozenset()
    key_admin: bool = False  # the bootstrap key: every scope and the administrators' routes
    clear_session: bool = False
    session_set: bool = False
    # Settings → Branding for this page (services/gateway/views/branding.py); None: built-in.
    brand: BrandingAnswer | None = None
    # An invitation link's language (accept and new-link pages): before Accept-Language.
    invitation_locale: str | None = None


STATE = web.RequestKey("gateway_state", RequestState)


def req_state(request: web.Request) -> RequestState:
    state = request.get(STATE)
    if state is None:
        state = RequestState()
        request[STATE] = state
    return state
