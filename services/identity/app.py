"""Composition root: create_app(settings) wires the pool, the outbox relay, the password
hasher, the admin bootstrap and the routes. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

from aiohttp import web

from libs.common.retention import pruning
from libs.common.web import (
    POOL,
    add_database,
    add_routes,
    add_service_bus,
    base_app,
    require_service_proof,
)

from . import api, consumer, handlers, openapi
from .background import Background
from .domain import SessionPolicy
from .passwords import Passwords
from .settings import IdentitySettings

SERVICE = "identity"
SCHEMA = "identity"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(
    settings: IdentitySettings,
    *,
    clock: Callable[[], datetime] = handlers.utcnow,
    passwords: Passwords | None = None,
) -> web.Application:
    app = base_app(SERVICE, body_timeout=settings.http_body_timeout_seconds)
    add_database(app, settings, SCHEMA, migrations=MIGRATIONS)

    async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
        hasher = passwords or Passwords(
            workers=settings.identity_hash_concurrency,
            queue=settings.identity_hash_queue,
            max_wait=settings.identity_hash_max_wait_seconds,
        )
        await hasher.prepare()
        deps = handlers.Deps(
            db=app[POOL],
            passwords=hasher,
            sessions=SessionPolicy(
                idle=timedelta(minutes=settings.identity_session_idle_minutes),
                absolute=timedelta(hours=settings.identity_session_max_hours),
            ),
            public_base=settings.public_base,
            site_name=settings.public_url.host or "localhost",
            sealer=settings.sealer(),
            clock=clock,
        )
        app[api.DEPS] = deps
        background = app[api.BACKGROUND] = Background()
        if settings.admin_email and settings.admin_password:
            await handlers.bootstrap_admin(
                deps, settings.admin_email, settings.admin_password.get_secret_value()
            )
        yield
        await background.drain()
        if passwords is None:
            hasher.close()

    app.cleanup_ctx.append(identity_ctx)
    # After the pool, so the relay has it; it publishes what the handlers commit.
    # The consumer records the Activity log from the events that carry an actor.
    add_service_bus(app, settings, SERVICE, api.DEPS, consumer.BINDINGS, consumer.HANDLERS)
    app.cleanup_ctx.append(
        pruning(
            "identity-retention",
            lambda app: handlers.prune_ended(
                app[api.DEPS],
                timedelta(days=settings.identity_retention_days),
                settings.activity_retention,
            ),
        )
    )
    add_routes(app, api.ROUTES)
    app.router.add_get("/openapi.json", openapi.openapi)
    require_service_proof(app, settings, api.CALLERS)
    return app
