"""Every link that goes out is recorded (its hash: never the token) and counted: the caps
on new links, whoever asks for one (README "Caps on new links").

- one invitation: at most ``INVITATIONS_SENDS_PER_INVITATION_HOUR`` emails in any hour,
  its first one included;
- one address: at most ``INVITATIONS_SENDS_PER_ADDRESS_HOUR`` new links in any hour,
  across all its invitations. First invitations neither count nor are refused: staff
  inviting one person to several portals in a row is not what the cap is for; resending
  them is.

Beyond a cap the answer is 429 ``send_rate_limited`` with when the next one can go, and
nothing changes: the latest link stays the only one that works."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from libs.common.db import Conn

from .. import domain
from .. import repository as repo
from ..metrics import SENDS_CAPPED
from .base import Deps, Row

FIRST = "invited"
REMINDER = "reminder"
REQUESTED_BY_INVITEE = "requested_by_invitee"


async def record_link(
    conn: Conn, row: Row, token_hash: str, issued_at: datetime, expires_at: datetime, reason: str
) -> None:
    """Keep the link just sent for the invitation in ``row`` (its hash, never the token);
    the invitation's earlier link is then replaced."""
    await repo.record_link(
        conn,
        token_hash=token_hash,
        invitation_id=row["id"],
        email_lower=row["email_lower"],
        issued_at=issued_at,
        expires_at=expires_at,
        reason=reason,
    )


async def check_cap(
    conn: Conn, deps: Deps, row: Row, now: datetime, mates: Sequence[Row] = ()
) -> None:
    """Raise RateLimited if a new link for this invitation (and the ``mates`` of its group
    that the same email re-sends) would pass a cap. Call it with the rows locked; it holds
    the address's lock until the transaction ends, so what it counted stays true until
    the caller records the new link. One email is one send to the address, however many
    invitations it is for."""
    settings = deps.settings
    per_invitation = settings.invitations_sends_per_invitation_hour
    for each in (row, *mates):
        sent = await repo.sends_of_invitation(conn, each["id"], now - domain.SEND_WINDOW)
        until = domain.next_send_at(sent, per_invitation, domain.SEND_WINDOW, now)
        if until is not None:
            SENDS_CAPPED.labels("invitation").inc()
            raise domain.send_limited(until, now, limit=per_invitation)
    per_address = settings.invitations_sends_per_address_hour
    await repo.lock_address(conn, row["email_lower"])
    sent = await repo.resends_to_address(conn, row["email_lower"], now - domain.SEND_WINDOW)
    until = domain.next_send_at(sent, per_address, domain.SEND_WINDOW, now)
    if until is not None:
        SENDS_CAPPED.labels("address").inc()
        raise domain.send_limited(until, now, limit=per_address, email=row["email"])


async def new_link_requests_left(conn: Conn, deps: Deps, invitation_id: uuid.UUID) -> bool:
    """Whether Email me a new link may still send for this invitation today."""
    now = deps.clock()
    sent = await repo.sends_of_invitation(
        conn, invitation_id, now - domain.NEW_LINK_WINDOW, REQUESTED_BY_INVITEE
    )
    limit = deps.settings.invitations_new_link_requests_per_day
    return domain.next_send_at(sent, limit, domain.NEW_LINK_WINDOW, now) is None
