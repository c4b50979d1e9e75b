"""The composition root: create_app(settings) wires the pool, bus, HTTP clients, the
expiry sweep and the routes. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from libs.common.http import service_sessions
from libs.common.logging import get_logger
from libs.common.retention import pruning
from libs.common.service_auth import TokenSigner
from libs.common.tasks import periodic
from libs.common.web import (
    POOL,
    Apart,
    add_database,
    add_routes,
    add_service_bus,
    base_app,
    require_service_proof,
    service_signer,
)

from . import api, consumer, domain, handlers, metrics, openapi
from .clients import Directory
from .handlers import Deps
from .handlers.sending import FirstWrites
from .settings import InvitationsSettings

SERVICE = "invitations"
SCHEMA = "invitations"
MIGRATIONS = Path(__file__).parent / "migrations"

log = get_logger(__name__)


def create_app(
    settings: InvitationsSettings, *, clock: domain.Clock = domain.utcnow
) -> web.Application:
    app = base_app(SERVICE, body_timeout=settings.http_body_timeout_seconds)
    add_database(app, settings, SCHEMA, migrations=MIGRATIONS)
    # After the pool, before the bus: the consumer's handlers call identity and portals.
    app.cleanup_ctx.append(_deps(settings, clock, service_signer(app, settings)))
    add_service_bus(
        app,
        settings,
        SERVICE,
        api.DEPS,
        consumer.BINDINGS,
        consumer.HANDLERS,
        alone=consumer.ALONE,
        apart=[
            Apart(
                consumer.REQUESTS,
                consumer.REQUEST_HANDLERS,
                prefetch=consumer.REQUESTS_PREFETCH,
                alone=consumer.ALONE,
            )
        ],
    )
    new_links = handlers.NewLinkWorker(settings.invitations_new_link_seconds)
    app[api.NEW_LINKS] = new_links
    app.cleanup_ctx.append(new_links.context(lambda app: app[api.DEPS]))
    app.cleanup_ctx.append(
        periodic(
            "invitations-reminders",
            settings.invitations_sweep_seconds,
            lambda app: handlers.remind_once(app[api.DEPS]),
        )
    )
    app.cleanup_ctx.append(
        periodic(
            "invitations-expiry-sweep",
            settings.invitations_sweep_seconds,
            lambda app: handlers.sweep_once(app[api.DEPS]),
        )
    )
    app.cleanup_ctx.append(
        pruning("invitations-retention", lambda app: handlers.clear_closed_once(app[api.DEPS]))
    )
    # At least as often as the sweep, which is what turns pending into expired.
    every = min(metrics.REFRESH_SECONDS, settings.invitations_sweep_seconds)
    app.cleanup_ctx.append(
        periodic("invitations-metrics", every, lambda app: metrics.refresh(app[POOL], clock()))
    )
    add_routes(app, api.ROUTES)
    app.router.add_get("/openapi.json", openapi.openapi)
    require_service_proof(app, settings, api.CALLERS)
    return app


def _deps(
    settings: InvitationsSettings, clock: domain.Clock, signer: TokenSigner
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The use cases' Deps, once the pool is open, with the directory's HTTP sessions."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with service_sessions("identity", "portals") as sessions:
            directory = Directory(
                sessions, settings.identity_url, settings.portals_url, signer=signer
            )
            app[api.DEPS] = Deps(
                db=app[POOL],
                clock=clock,
                settings=settings,
                directory=directory,
                firsts=FirstWrites(app[POOL]),
            )
            yield

    return ctx
