"""A staff invitation never outlives its sender's right to send it (SECURITY.md "Staff
invitations"). When identity says the Administrator who sent one was disabled, erased or
given a role that can't invite staff, their open staff invitations are revoked, as Revoke
does it: revoked, announced (invitation.staff.revoked), the link dead. Client invitations
are not touched: they stay valid through staff turnover."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from libs.common.actor import Actor
from libs.common.db import transaction

from .. import repository as repo
from . import staff_events
from .base import Deps, log

Why = Literal["sender_disabled", "sender_erased", "sender_role_changed"]


async def revoke_sent_by(
    deps: Deps, user_id: uuid.UUID, before: datetime, why: Why, actor: Actor | None = None
) -> int:
    """Revoke the pending and expired staff invitations ``user_id`` sent before ``before``
    (when identity took the right away: an event applied late must not reach what they
    sent once they had it again). Idempotent: a revoked invitation stays as it is; an
    acceptance under way has spent its link, as for Revoke. ``actor``: whoever took the
    right away, whose change this is in the Activity log."""
    now = deps.clock()
    async with transaction(deps.db) as conn:
        ids = await repo.open_staff_sent_by(conn, user_id, before)
        for invitation_id in ids:
            row = await repo.revoke(conn, invitation_id, now)
            await staff_events.announce_closed(conn, "invitation.staff.revoked", row, actor=actor)
            log.info("staff_invitation_revoked", invitation_id=str(invitation_id), reason=why)
    if ids:
        log.info(
            "sender_staff_invitations_revoked", user_id=str(user_id), reason=why, count=len(ids)
        )
    return len(ids)
