"""Use cases: add, list, rotate and delete endpoints; queue an event's deliveries; the
delivery log and Redeliver. Each takes the mailer's ``Deps`` first (the webhook sealer
and limits come from ``deps.settings``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from libs.common.cursor import decode_cursor, encode_cursor
from libs.common.db import atomic, connection, transaction
from libs.common.errors import InvalidInput, NotFound
from libs.common.events import Event
from libs.common.logging import get_logger

from ..handlers import Deps
from . import domain, repository
from .domain import RefusedTarget
from .targets import check_target

log = get_logger(__name__)


def _endpoint_gone() -> NotFound:
    return NotFound("There is no such webhook endpoint.", code="webhook_not_found")


async def add_endpoint(deps: Deps, url: str, events: list[str]) -> tuple[dict[str, Any], str]:
    """The endpoint and its signing secret, which is returned this once only."""
    try:
        await check_target(url, allow_private=deps.settings.webhooks_allow_private)
    except RefusedTarget as exc:
        details = {"problem": exc.problem, **({"host": exc.host} if exc.host else {})}
        raise InvalidInput(str(exc), code="webhook_target_refused", details=details) from None
    secret = domain.new_secret()
    wanted = [t for t in domain.EVENT_TYPES if t in set(events)]
    sealed = deps.settings.webhook_sealer().seal_text(secret)
    async with transaction(deps.db) as conn:
        row = await repository.insert_endpoint(conn, uuid.uuid4(), url, wanted, sealed)
        # Its events reach the queue before it is committed (subscription.py).
        await deps.subscription.settle(conn)
    log.info("webhook_endpoint_added", endpoint_id=str(row["id"]), events=wanted)
    return row, secret


async def rotate_secret(deps: Deps, endpoint_id: uuid.UUID) -> tuple[dict[str, Any], str]:
    secret = domain.new_secret()
    sealed = deps.settings.webhook_sealer().seal_text(secret)
    overlap_seconds = deps.settings.webhooks_rotation_overlap_seconds
    async with transaction(deps.db) as conn:
        if not await repository.rotate_secret(conn, endpoint_id, sealed, overlap_seconds):
            raise _endpoint_gone()
        row = await repository.get_endpoint(conn, endpoint_id)
    assert row is not None
    log.info("webhook_secret_rotated", endpoint_id=str(endpoint_id))
    return row, secret


async def list_endpoints(deps: Deps, deliveries: int = 0) -> list[dict[str, Any]]:
    """The endpoints; with ``deliveries``, each with that many of its newest deliveries
    (newest first) under "deliveries"."""
    async with connection(deps.db) as conn:
        endpoints = await repository.list_endpoints(conn)
        if not deliveries:
            return endpoints
        logs: dict[uuid.UUID, list[dict[str, Any]]] = {e["id"]: [] for e in endpoints}
        for row in await repository.latest_deliveries(conn, deliveries):
            logs.setdefault(row["endpoint_id"], []).append(row)
    for log_rows in logs.values():
        log_rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [{**e, "deliveries": logs[e["id"]]} for e in endpoints]


async def delete_endpoint(deps: Deps, endpoint_id: uuid.UUID) -> None:
    async with connection(deps.db) as conn:
        if not await repository.delete_endpoint(conn, endpoint_id):
            raise _endpoint_gone()
    log.info("webhook_endpoint_deleted", endpoint_id=str(endpoint_id))
    # The types no endpoint wants any more stop reaching the queue; if that fails, they
    # only cost a delivery each until the next settle.
    try:
        await deps.subscription.settle_now(deps.db)
    except Exception as exc:
        log.warning("webhook_subscription_not_settled", error=type(exc).__name__)


async def deliveries(
    deps: Deps, endpoint_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    # One endpoint's log: another endpoint's cursor would page from a row not in it.
    listing = f"webhook_deliveries/{endpoint_id}"
    after = decode_cursor(listing, cursor) if cursor else None
    async with connection(deps.db) as conn:
        if await repository.get_endpoint(conn, endpoint_id) is None:
            raise _endpoint_gone()
        rows = await repository.list_deliveries(conn, endpoint_id, limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(
        listing, rows[-1]["created_at"], rows[-1]["id"]
    ) if more and rows else None


async def redeliver(deps: Deps, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> dict[str, Any]:
    async with connection(deps.db) as conn:
        row = await repository.redeliver(conn, endpoint_id, delivery_id)
    if row is None:
        raise NotFound("There is no such delivery.", code="webhook_delivery_not_found")
    log.info("webhook_redelivery_queued", delivery_id=str(delivery_id))
    return row


async def queue_events(deps: Deps, events: Sequence[Event]) -> int:
    """In one transaction (the consumer's, with the inbox rows) and one statement for the
    events that arrived together: one delivery per endpoint that wants each event's type.
    A payload is built from the event's public model only."""
    rows = [
        (
            envelope.id,
            envelope.type,
            domain.payload(
                envelope.type, envelope.occurred_at, data.model_dump(mode="json")
            ).decode(),
        )
        for envelope, data in events
    ]
    async with atomic(deps.db) as conn:
        count = await repository.queue_for_events(conn, rows)
    if count:
        log.info("webhook_deliveries_queued", count=count)
    return count
