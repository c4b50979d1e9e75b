"""The composition root: create_app(settings) wires the pool, bus, HTTP clients, the
expiry sweep and the routes. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from libs.common.http import new_session
from libs.common.logging import get_logger
from libs.common.web import POOL, add_bus, add_database, base_app

from . import api, consumer, domain, handlers, metrics, openapi
from .clients import Directory
from .handlers import Deps
from .settings import InvitationsSettings

SERVICE = "invitations"
SCHEMA = "invitations"

log = get_logger(__name__)


def create_app(
    settings: InvitationsSettings, *, clock: domain.Clock = domain.utcnow
) -> web.Application:
    app = base_app(SERVICE)
    deps = Deps(settings=settings, clock=clock)
    app[api.DEPS] = deps
    add_database(app, settings, SCHEMA)
    # Before the bus: the consumer's handlers call identity and portals.
    app.cleanup_ctx.append(_directory(deps))
    add_bus(
        app,
        settings,
        SERVICE,
        schema=SCHEMA,
        bindings=consumer.BINDINGS,
        handlers=consumer.handlers(deps),
    )
    app.cleanup_ctx.append(_sweeper(deps, settings.invitations_sweep_seconds))
    # At least as often as the sweep, which is what turns pending into expired.
    every = min(metrics.REFRESH_SECONDS, settings.invitations_sweep_seconds)
    app.cleanup_ctx.append(metrics.refresher(clock, every))
    api.setup_routes(app)
    app.router.add_get("/openapi.json", openapi.openapi)
    return app


def _directory(deps: Deps) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        session = new_session()
        deps.directory = Directory(session, deps.settings.identity_url, deps.settings.portals_url)
        yield
        deps.directory = None
        await session.close()

    return ctx


def _sweeper(deps: Deps, every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def loop(app: web.Application) -> None:
        while True:
            try:
                await handlers.sweep_once(app[POOL], deps)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be away for a moment; the next round tries again.
                log.warning("expiry_sweep_failed", error=type(exc).__name__)
            await asyncio.sleep(every)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name="invitations-expiry-sweep")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
