"""Composition root: ``create_app(settings)`` wires the pool, the bus (relay + consumer)
and the routes. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from libs.common.bus import in_inbox
from libs.common.web import POOL, add_bus, add_database, base_app, require_service_proof

from . import api, consumer, handlers, openapi
from .settings import PortalsSettings

SERVICE = "portals"
SCHEMA = "portals"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: PortalsSettings) -> web.Application:
    # Content may be 100 000 characters of up to 4 bytes each, plus JSON escaping.
    app = base_app(SERVICE, client_max_size=1024 * 1024)
    add_database(app, settings, SCHEMA, migrations=MIGRATIONS)

    async def deps_ctx(app: web.Application) -> AsyncIterator[None]:
        # Once the pool is open: the views and the consumer call the use cases with it.
        app[api.DEPS] = handlers.Deps(db=app[POOL], settings=settings)
        yield

    app.cleanup_ctx.append(deps_ctx)
    add_bus(
        app,
        settings,
        SERVICE,
        schema=SCHEMA,
        bindings=consumer.BINDINGS,
        handlers=in_inbox(lambda: app[api.DEPS], consumer.HANDLERS),
    )
    api.add_routes(app)
    app.router.add_get("/openapi.json", openapi.openapi)
    require_service_proof(app, settings, api.CALLERS)
    return app
