"""The expiry sweep: pending invitations past their end become expired; the retention
sweep clears what a closed invitation no longer needs."""

from __future__ import annotations

from datetime import timedelta

from libs.common.context import new_id, set_correlation_id
from libs.common.db import transaction, try_xact_lock

from .. import domain
from .. import repository as repo
from . import staff_events
from .base import Deps, closed_event, emit, log

SWEEP_LOCK = "invitations:sweep"


async def sweep_once(deps: Deps, *, batch: int = 500) -> int:
    """Mark pending invitations past their expiry as expired, one batch per transaction.
    Only the instance holding the advisory lock sweeps; the others skip this round."""
    set_correlation_id(new_id())
    total = 0
    while True:
        async with transaction(deps.db) as conn:
            if not await try_xact_lock(conn, SWEEP_LOCK):
                return total
            rows = await repo.expire_due(conn, deps.clock(), batch)
            for row in rows:
                if staff_events.is_staff(row):
                    await staff_events.announce_closed(conn, "invitation.staff.expired", row)
                    continue
                await emit(conn, "invitation.expired", closed_event(row))
        total += len(rows)
        if len(rows) < batch:
            if total:
                log.info("invitations_expired", count=total)
            return total


async def clear_closed_once(deps: Deps) -> dict[str, int]:
    """Clear the Personal Message of invitations accepted or revoked
    ``INVITATIONS_RETENTION_DAYS`` ago (the invitation itself stays: the Invitations
    screen's history), and forget the requests counted for the cap per integration an
    hour on. Any replica may run it at once: each row is cleared once."""
    before = deps.clock() - timedelta(days=deps.settings.invitations_retention_days)
    cleared = await repo.clear_closed_messages(deps.db, before)
    # The requests counted for the cap per integration, once out of its window.
    forgotten = await repo.forget_sender_counts(deps.db, domain.sender_window(deps.clock()))
    return {"personal_messages_cleared": cleared, "sender_counts": forgotten}
