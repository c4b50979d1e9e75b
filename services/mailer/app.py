"""The composition root: health/metrics routes, the pool, the bus (consumer of mail jobs
and outbox relay) and the senders, each opened and closed with the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from libs.common.outbox import OutboxRelay
from libs.common.web import POOL, RELAY, add_bus, add_database, base_app

from .consumer import BINDINGS, HANDLERS
from .sender import Sender
from .settings import MailerSettings

SERVICE = "mailer"
SCHEMA = "mailer"
SENDER = web.AppKey("sender", Sender)


def create_app(settings: MailerSettings) -> web.Application:
    app = base_app(SERVICE)
    # Workers hold a connection only while claiming or recording, never during SMTP.
    add_database(app, settings, SCHEMA, max_size=min(settings.mailer_concurrency, 16) + 4)
    add_bus(
        app,
        settings,
        SERVICE,
        schema=SCHEMA,
        bindings=BINDINGS,
        handlers=HANDLERS,
        prefetch=64,
    )

    async def senders(app: web.Application) -> AsyncIterator[None]:
        sender = Sender(app[POOL], settings)
        await sender.start()
        app[SENDER] = sender
        yield
        # Before the bus closes, so the relay still publishes the last outcomes.
        await sender.stop()
        if RELAY in app:
            await _wait_for_outbox(app[RELAY])

    app.cleanup_ctx.append(senders)
    return app


async def _wait_for_outbox(relay: OutboxRelay, timeout: float = 5.0) -> None:
    """Let the running relay publish what the senders just committed. The relay's own
    drain at bus shutdown cancels a flush in progress (the rows stay for the next start,
    so nothing is lost, only late); waiting here avoids that race in a normal stop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if await relay.backlog() == 0:
                return
        except Exception:  # database gone: the rows wait for the next start
            return
        await asyncio.sleep(0.05)
