"""The expiry sweep: acceptances whose holder went quiet are handed back (pending) or
expired, pending invitations past their end become expired; the retention sweep clears
what a closed invitation no longer needs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg

from libs.common.context import new_id, set_correlation_id
from libs.common.db import Conn, transaction, try_xact_lock

from .. import domain
from .. import repository as repo
from . import staff_events
from .base import Deps, Row, closed_event, emit, log
from .withdrawing import withdraw_mails

SWEEP_LOCK = "invitations:sweep"


async def sweep_once(deps: Deps, *, batch: int = 500) -> int:
    """Hand back or expire the acceptances whose lease is over, then mark pending
    invitations past their expiry as expired, one batch per transaction. Only the
    instance holding the advisory lock sweeps; the others skip this round. Returns how
    many invitations were expired."""
    set_correlation_id(new_id())
    total = await _end_stalled_acceptances(deps, batch)
    if total < 0:
        return 0  # another instance sweeps this round
    while True:
        async with transaction(deps.db) as conn:
            if not await try_xact_lock(conn, SWEEP_LOCK):
                return total
            rows = await repo.expire_due(conn, deps.clock(), batch)
            # An expired link's email, if still waiting in the mailer, is not sent.
            await withdraw_mails(conn, rows)
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


async def _end_stalled_acceptances(deps: Deps, batch: int) -> int:
    """An acceptance whose holder died, or gave up after identity's answer timed out, would
    otherwise stay 'accepting' for good: listed as accepted though the client has no
    access, and out of reach of Revoke, Resend and this sweep. Nothing was accepted (only
    a holder with its claim accepts), so nothing is granted here: in the link's life the
    invitation is pending again once a retry had its time, after the link's end it is
    expired (domain.stalled_acceptance_becomes).
    Returns how many were expired, or -1 when another instance holds the sweep's lock."""
    expired = 0
    while True:
        async with transaction(deps.db) as conn:
            if not await try_xact_lock(conn, SWEEP_LOCK):
                return -1
            now = deps.clock()
            quiet_since = now - domain.ACCEPT_RETRY_WINDOW
            rows = await repo.stalled_acceptances(conn, now, quiet_since, batch)
            for row in rows:
                becomes = domain.stalled_acceptance_becomes(
                    row["status"], row["expires_at"], row["accept_claim_until"], now
                )
                if becomes is None or (becomes == "pending" and await _hand_back(conn, row["id"])):
                    continue
                await _expire(conn, await repo.end_stalled(conn, row["id"], "expired"))
                expired += 1
        if len(rows) < batch:
            return expired


async def _hand_back(conn: Conn, invitation_id: uuid.UUID) -> bool:
    """Pending again; False when a newer invitation to the same person (and portal) is
    pending already: that one stands, and this one is expired instead."""
    try:
        async with conn.transaction():
            await repo.end_stalled(conn, invitation_id, "pending")
    except asyncpg.UniqueViolationError:
        return False
    log.info("invitation_acceptance_handed_back", invitation_id=str(invitation_id))
    return True


async def _expire(conn: Conn, row: Row) -> None:
    await withdraw_mails(conn, [row])
    if staff_events.is_staff(row):
        await staff_events.announce_closed(conn, "invitation.staff.expired", row)
    else:
        await emit(conn, "invitation.expired", closed_event(row))
    log.info("invitation_acceptance_expired", invitation_id=str(row["id"]))
