"""Composition root: ``create_app(settings)`` wires the pool, the bus (relay + consumer)
and the routes. Nothing is built at import time."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from libs.common.tasks import periodic
from libs.common.web import (
    add_database,
    add_deps,
    add_routes,
    add_service_bus,
    base_app,
    require_service_proof,
)

from . import api, consumer, handlers, openapi
from .settings import PortalsSettings

SERVICE = "portals"
SCHEMA = "portals"
MIGRATIONS = Path(__file__).parent / "migrations"
# At start, then now and again for pages an older replica saved during a rolling upgrade.
RERENDER_SECONDS = 300.0


def create_app(settings: PortalsSettings) -> web.Application:
    # Content may be 100 000 characters of up to 4 bytes each, plus JSON escaping.
    app = base_app(
        SERVICE, client_max_size=1024 * 1024, body_timeout=settings.http_body_timeout_seconds
    )
    add_database(app, settings, SCHEMA, migrations=MIGRATIONS)
    add_deps(app, api.DEPS, lambda pool: handlers.Deps(db=pool, settings=settings))
    add_service_bus(app, settings, SERVICE, api.DEPS, consumer.BINDINGS, consumer.HANDLERS)
    app.cleanup_ctx.append(
        periodic(
            "portals-rerender", RERENDER_SECONDS, lambda app: handlers.rerender_once(app[api.DEPS])
        )
    )
    add_routes(app, api.ROUTES)
    app.router.add_get("/openapi.json", openapi.openapi)
    require_service_proof(app, settings, api.CALLERS)
    return app
