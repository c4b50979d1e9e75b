"""Composition root: the gateway app with its templates, static files, security
middlewares, the upstream clients and the routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from libs.common.http import ServiceClient, service_sessions
from libs.common.protocol import body_coding_middleware
from libs.common.service_auth import TokenSigner
from libs.common.tasks import periodic
from libs.common.web import POOL, add_database, base_app, service_signer

from . import assets, i18n, script_words
from .cache import ChangeListener, GatewayCache
from .compression import compression_middleware
from .domain import repeated
from .limits import RateLimits
from .rendering import error_middleware
from .security import csrf_middleware, on_prepare, session_middleware
from .settings import GatewaySettings
from .state import CACHE, LIMITS, SETTINGS, TRUSTED_PROXIES, UPSTREAM
from .upstream import Branding, Identity, Invitations, Portals, Upstream, Webhooks
from .views import (
    accept,
    activity,
    admin,
    api,
    branding,
    editor,
    imports,
    invite_several,
    keys,
    openapi,
    pages,
    staff,
    webhooks,
)
from .views.branding import branding_middleware

HERE = Path(__file__).parent
SCHEMA = "gateway"
MIGRATIONS = HERE / "migrations"


# The pages and the API, in the order their routes are matched.
VIEWS = (
    pages,
    accept,
    invite_several,
    editor,
    imports,
    admin,
    staff,
    api,
    keys,
    activity,
    openapi,
    webhooks,
    branding,
)


def create_app(
    settings: GatewaySettings, *, clock: Callable[[], float] = time.time
) -> web.Application:
    app = base_app(
        "gateway",
        json_errors=False,
        client_max_size=64 * 1024,
        body_timeout=settings.http_body_timeout_seconds,
        # Outermost first, and the order matters: compression around everything (error
        # pages too); branding before the error pages (an error page shows the agency
        # too); the error pages around the checks (a CSRF refusal or a session failure
        # renders as a page, or JSON under /api); an encoded body refused before anything
        # reads it (the CSRF check reads forms); CSRF and API keys before the session (a
        # forged POST is refused without asking identity).
        middlewares=[
            compression_middleware,
            branding_middleware,
            error_middleware,
            body_coding_middleware,
            csrf_middleware,
            session_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[CACHE] = GatewayCache(
        settings.gateway_cache_seconds, max_bytes=settings.gateway_cache_max_bytes
    ).measured()
    app[TRUSTED_PROXIES] = settings.trusted_proxies
    # The rate-limit counters, shared by every replica (limits.py).
    add_database(app, settings, SCHEMA, migrations=MIGRATIONS, max_size=5)
    app.cleanup_ctx.append(_limits_ctx(settings, clock))
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        # Templates ship with the release: don't stat every file on every render (7 % of
        # the gateway's CPU on the portal page).
        auto_reload=False,
    )
    # _/gettext/ngettext and the `when` filter, in the language of the page (i18n.py).
    i18n.install(env)
    # The page scripts' words, translated into base.html's meta#words (script_words.py).
    script_words.install(env)
    env.filters["repeated"] = repeated
    app.on_response_prepare.append(on_prepare)
    app.cleanup_ctx.append(_upstream_ctx(settings, service_signer(app, settings)))
    app.cleanup_ctx.append(_listener_ctx(settings))
    for view in VIEWS:
        app.router.add_routes(view.routes)
    # The static files under fingerprinted URLs: static("app.css") in templates.
    assets.install(app, env, HERE / "static")
    return app


def _limits_ctx(
    settings: GatewaySettings, clock: Callable[[], float]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[LIMITS] = RateLimits(
            app[POOL],
            per_address=settings.gateway_rate_per_ip,
            per_email=settings.gateway_rate_per_email,
            window=settings.gateway_rate_window_seconds,
            clock=clock,
        )
        # Every replica prunes once a window: deleting rows nobody counts any more is
        # safe to do twice.
        pruning = periodic("gateway-rate-prune", settings.gateway_rate_window_seconds, _prune)
        async with pruning(app):
            yield

    return ctx


async def _prune(app: web.Application) -> None:
    await app[LIMITS].prune()


def _upstream_ctx(
    settings: GatewaySettings, signer: TokenSigner
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        urls = {
            "identity": settings.identity_url,
            "portals": settings.portals_url,
            "invitations": settings.invitations_url,
            "mailer": settings.mailer_url,
        }
        # A pool each: one service that hangs never holds the connections to the others.
        async with service_sessions(*urls) as sessions:
            client = {
                name: ServiceClient(sessions[name], url, name, signer=signer)
                for name, url in urls.items()
            }
            app[UPSTREAM] = Upstream(
                identity=Identity(client["identity"], app[CACHE]),
                portals=Portals(client["portals"], app[CACHE]),
                invitations=Invitations(client["invitations"]),
                webhooks=Webhooks(client["mailer"]),
                branding=Branding(client["mailer"], app[CACHE]),
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
        listener = ChangeListener(
            app[CACHE], settings.service_amqp_url("gateway"), settings.bus_prefix
        )
        listener.start()
        yield
        await listener.stop()

    return ctx
