"""A staff invitation never outlives its sender's right to send it (SECURITY.md "Staff
invitations"). When identity says the Administrator who sent one was disabled, erased or
given a role that can't invite staff, their open staff invitations are revoked, as Revoke
does it: revoked, announced (invitation.staff.revoked), the link dead. Client invitations
are not touched: they stay valid through staff turnover.

Should the link be used before that event is applied (the queue behind, the service
just started), the link asks identity about the sender itself (``check_sender``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from libs.common.actor import Actor
from libs.common.db import Conn, transaction
from libs.common.errors import NotFound

from .. import domain
from .. import repository as repo
from . import staff_events
from .base import Deps, Row, log
from .withdrawing import withdraw_mails

Why = Literal["sender_disabled", "sender_erased", "sender_role_changed", "sender_checked"]


async def revoke_sent_by(
    deps: Deps,
    user_id: uuid.UUID,
    before: datetime | None,
    why: Why,
    actor: Actor | None = None,
) -> int:
    """Revoke the pending and expired staff invitations ``user_id`` sent before ``before``
    (when identity took the right away: an event applied late must not reach what they
    sent once they had it again; None: every one, identity having just said they lack
    it). Idempotent: a revoked invitation stays as it is; an acceptance under way has
    spent its link, as for Revoke. ``actor``: whoever took the right away, whose change
    this is in the Activity log."""
    async with transaction(deps.db) as conn:
        ids = await repo.open_staff_sent_by(conn, user_id, before)
        await _revoke(conn, ids, deps.clock(), why, actor)
    if ids:
        log.info(
            "sender_staff_invitations_revoked", user_id=str(user_id), reason=why, count=len(ids)
        )
    return len(ids)


async def check_sender(deps: Deps, row: Row) -> None:
    """At the link (validate, reserve): a staff invitation whose sender identity no longer
    knows as an active Administrator is revoked now, with the sender's other open ones,
    and refused as any revoked invitation is (410 invitation_revoked). An invitation
    that names no sender id (a client's, the bootstrap key's, or one made before senders
    were recorded) asks nobody. Identity away: Unavailable, as the accept saga needs
    identity anyway."""
    sender = row["invited_by_id"]
    if sender is None or await _may_still_send(deps, row["invited_by"], sender):
        return
    log.warning("staff_invitation_sender_without_right", invitation_id=str(row["id"]))
    now = deps.clock()
    async with transaction(deps.db) as conn:
        # This one even while this request holds it (reserve): its claim goes with it.
        await _revoke(conn, [row["id"]], now, "sender_checked")
    await revoke_sent_by(deps, sender, None, "sender_checked")
    domain.check_token_usable("revoked", row["expires_at"], now)


async def _revoke(
    conn: Conn, ids: list[uuid.UUID], now: datetime, why: Why, actor: Actor | None = None
) -> None:
    """Revoke these staff invitations (pending, expired, or held by an acceptance under
    way) as Revoke does: their waiting email withdrawn, each announced."""
    revoked = await repo.revoke_open(conn, ids, now)
    await withdraw_mails(conn, revoked)
    for row in revoked:
        await staff_events.announce_closed(conn, "invitation.staff.revoked", row, actor=actor)
        log.info("staff_invitation_revoked", invitation_id=str(row["id"]), reason=why)


async def _may_still_send(deps: Deps, address: str | None, sender: uuid.UUID) -> bool:
    """Identity's answer about the sender, looked up by the address they sent as (the
    gateway gives their account's email with their id; an erasure took it away)."""
    if not address:
        return False
    try:
        user = await deps.directory.find_user(address)
    except NotFound:
        return False
    if user is None or str(user.get("id")) != str(sender):
        return False  # gone; someone else may have the address since
    return domain.may_send_staff_invitations(
        str(user.get("role")), disabled=bool(user.get("disabled"))
    )
