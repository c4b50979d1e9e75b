"""The composition root: the pool, the bus (consumer of mail jobs and lifecycle events,
outbox relay), the mail senders, the webhook senders and the webhooks API, each opened
and closed with the app."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from libs.common.bus import Bus, Consumer
from libs.common.logging import get_logger
from libs.common.outbox import OutboxRelay
from libs.common.retention import pruning
from libs.common.tasks import periodic
from libs.common.web import (
    BUS_PARTS,
    POOL,
    add_database,
    add_deps,
    add_routes,
    add_service_bus,
    base_app,
    require_service_proof,
)

from . import api, openapi
from .branding.cache import BrandingSource
from .consumer import BINDINGS, HANDLERS
from .handlers import Deps, prune_finished
from .rendering import is_public_domain
from .resealing import RESEAL_EVERY, reseal_stored
from .sender import Sender
from .settings import MailerSettings
from .webhooks.sender import WebhookSender
from .webhooks.subscription import SETTLE_EVERY, Subscription

SERVICE = "mailer"
SCHEMA = "mailer"
MIGRATIONS = Path(__file__).parent / "migrations"
log = get_logger(__name__)

SENDER = web.AppKey("sender", Sender)
WEBHOOK_SENDER = web.AppKey("webhook_sender", WebhookSender)


def create_app(settings: MailerSettings) -> web.Application:
    app = base_app(SERVICE, body_timeout=settings.http_body_timeout_seconds)
    warn_of_a_local_sender(settings)
    # Workers hold a connection only while claiming or recording, never during SMTP.
    add_database(
        app,
        settings,
        SCHEMA,
        migrations=MIGRATIONS,
        max_size=min(settings.mailer_concurrency, 16) + settings.webhooks_concurrency + 4,
    )
    # The senders use the Deps too.
    subscription = Subscription()
    add_deps(
        app, api.DEPS, lambda pool: Deps(db=pool, settings=settings, subscription=subscription)
    )

    async def consuming(bus: Bus, consumer: Consumer) -> None:
        assert consumer.queue is not None
        await subscription.attach(app[POOL], consumer.queue, bus)

    add_service_bus(
        app, settings, SERVICE, api.DEPS, BINDINGS, HANDLERS, prefetch=64, consuming=consuming
    )
    # Settled again now and then: bindings a broker brought back from its definitions, or a
    # settle that failed, are set right.
    app.cleanup_ctx.append(
        periodic("webhook-subscription", SETTLE_EVERY, lambda a: subscription.settle_now(a[POOL]))
    )

    async def senders(app: web.Application) -> AsyncIterator[None]:
        source = BrandingSource(app[api.DEPS], settings.mailer_branding_cache_seconds)
        app[api.BRANDING] = source
        sender = Sender(app[api.DEPS], source)
        await sender.start()
        app[SENDER] = sender
        yield
        # Before the bus closes, so the relay still publishes the last outcomes.
        await sender.stop()
        relay = app[BUS_PARTS].relay if BUS_PARTS in app else None
        if relay is not None:
            await _wait_for_outbox(relay)

    app.cleanup_ctx.append(senders)

    async def webhook_senders(app: web.Application) -> AsyncIterator[None]:
        sender = WebhookSender(app[POOL], settings)
        await sender.start()
        app[WEBHOOK_SENDER] = sender
        yield
        await sender.stop()

    app.cleanup_ctx.append(webhook_senders)
    app.cleanup_ctx.append(pruning("mailer-retention", lambda a: prune_finished(a[api.DEPS])))
    # While MAIL_JOB_KEY or WEBHOOK_SECRET_KEY lists more than one key: what the mailer
    # keeps sealed moves to the first, so the others can be dropped.
    app.cleanup_ctx.append(
        periodic(
            "reseal",
            RESEAL_EVERY,
            lambda a: reseal_stored(a[POOL], settings.sealer(), settings.webhook_sealer()),
        )
    )
    add_routes(app, api.ROUTES)
    app.router.add_get("/openapi.json", openapi.openapi)
    require_service_proof(app, settings, api.CALLERS)
    return app


def warn_of_a_local_sender(settings: MailerSettings) -> None:
    """MAIL_FROM left at this machine's address (the default no-reply@localhost) on a
    public site: receiving servers refuse or file as spam mail from a domain that isn't
    one, unless the relay rewrites the sender (some do, for their logged-in account)."""
    _, address = email.utils.parseaddr(settings.mail_from)
    domain = address.rpartition("@")[2]
    if not settings.local and not is_public_domain(domain):
        log.warning(
            "mail_from_not_public",
            mail_from=address,
            public_url=settings.public_base,
            problem=(
                f"MAIL_FROM's domain {domain!r} is not one the world can resolve: receiving"
                " servers refuse or file as spam mail from it. Set MAIL_FROM to an address"
                f" at your own domain, like 'ClientPress <no-reply@{settings.public_url.host}>'"
                " (docs/deploying.md)"
            ),
        )


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
