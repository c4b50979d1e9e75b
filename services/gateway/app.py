"""Composition root: the gateway app with its templates, static files, security
middlewares, the upstream clients and the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from libs.common.http import ServiceClient, new_session
from libs.common.web import base_app

from . import accept, admin, api, editor, pages
from .cache import ChangeListener, GatewayCache
from .domain import SlidingWindow
from .rendering import error_middleware
from .security import csrf_middleware, on_prepare, session_middleware
from .settings import GatewaySettings
from .state import CACHE, LIMITERS, SETTINGS, UPSTREAM, Limiters
from .upstream import Identity, Invitations, Portals, Upstream

HERE = Path(__file__).parent


def when(value: str | None) -> str:
    """ISO timestamp → "2026-11-25 10:51 UTC" for tables."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def create_app(settings: GatewaySettings) -> web.Application:
    app = base_app(
        "gateway",
        json_errors=False,
        client_max_size=64 * 1024,
        middlewares=[error_middleware, csrf_middleware, session_middleware],
    )
    app[SETTINGS] = settings
    app[CACHE] = GatewayCache(settings.gateway_cache_seconds)
    window = settings.gateway_rate_window_seconds
    app[LIMITERS] = Limiters(
        per_ip=SlidingWindow(settings.gateway_rate_per_ip, window),
        per_email=SlidingWindow(settings.gateway_rate_per_email, window),
    )
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        # Templates ship with the release: don't stat every file on every render (7 % of
        # the gateway's CPU on the portal page).
        auto_reload=False,
    )
    env.filters["when"] = when
    app.on_response_prepare.append(on_prepare)
    app.cleanup_ctx.append(_upstream_ctx(settings))
    app.cleanup_ctx.append(_listener_ctx(settings))
    app.router.add_routes(pages.routes)
    app.router.add_routes(accept.routes)
    app.router.add_routes(editor.routes)
    app.router.add_routes(admin.routes)
    app.router.add_routes(api.routes)
    app.router.add_static("/static/", HERE / "static", name="static")
    return app


def _upstream_ctx(
    settings: GatewaySettings,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with new_session() as session:
            app[UPSTREAM] = Upstream(
                identity=Identity(
                    ServiceClient(session, settings.identity_url, "identity"), app[CACHE]
                ),
                portals=Portals(
                    ServiceClient(session, settings.portals_url, "portals"), app[CACHE]
                ),
                invitations=Invitations(
                    ServiceClient(session, settings.invitations_url, "invitations")
                ),
            )
            yield

    return ctx


def _listener_ctx(
    settings: GatewaySettings,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.gateway_cache_seconds <= 0:
            yield
            return
        listener = ChangeListener(app[CACHE], settings.amqp_url, settings.bus_prefix)
        listener.start()
        yield
        await listener.stop()

    return ctx
