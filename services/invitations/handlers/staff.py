"""Staff invitations (Users → Invite Staff): an email and a role, Administrator or Staff,
and no portal. Everything else is a client invitation's machinery: a hashed one-time
token, the Invitation Link Expiry, the caps on new links, Resend and Revoke, the pages of
a link that no longer works, and reserve → account → accept under one claim. Inviting
someone who already has a pending staff invitation resends it (with the role given now)."""

from __future__ import annotations

import uuid

from libs.common.db import Conn, connection, transaction
from libs.common.email import email_key, normalise_email
from libs.common.errors import Conflict
from libs.common.i18n import check_locale

from .. import domain
from .. import repository as repo
from . import sends, staff_events
from .base import Deps, Outcome, Row, log
from .sending import _keys_of, _reissue

MAX_LISTED = 200


async def invite_staff(
    deps: Deps,
    email: str,
    role: str,
    invited_by: str | None,
    locale: str | None = None,
    key: str | None = None,
    invited_by_id: uuid.UUID | None = None,
) -> tuple[Row, Outcome]:
    """Create the staff invitation, or resend the pending one. Someone who already is at
    least the invited role is refused (409 already_on_team); a Client is invited like a
    stranger, and logs in to accept. ``key``: the Invite Staff form's (send_key): posted
    again while its invitation is pending, nothing more is sent. ``invited_by_id``: the
    sending Administrator's user id, when a person sent it: should they lose the right to
    invite staff, the invitation is revoked (staff_sender.py). A resend keeps the sender
    the invitation was made by."""
    address = normalise_email(email)
    domain.check_staff_role(role)
    invited_by = domain.check_inviter(invited_by)
    locale = check_locale(locale)
    # Asked before the transaction: no connection is held while identity answers.
    user = await deps.directory.find_user(address)
    if user is not None:
        domain.check_not_on_the_team(
            address, str(user.get("role", "client")), bool(user.get("disabled")), role
        )
    async with transaction(deps.db) as conn:
        return await _record(conn, deps, address, role, invited_by, locale, key, invited_by_id)


async def _record(
    conn: Conn,
    deps: Deps,
    email: str,
    role: str,
    invited_by: str | None,
    locale: str | None,
    key: str | None,
    invited_by_id: uuid.UUID | None,
) -> tuple[Row, Outcome]:
    email_lower = email_key(email)
    for _ in range(5):
        if key is not None:
            existing = await repo.find_by_key(conn, key)
            if existing is not None and staff_events.is_staff(existing):
                if (
                    domain.effective_status(
                        existing["status"], existing["expires_at"], deps.clock()
                    )
                    == "pending"
                ):
                    return existing, "duplicate"
                key = None  # over (revoked, expired, accepted): invited again, as without
        pending = await repo.find_pending_staff_for_update(conn, email_lower)
        if pending is not None and key is not None and key in _keys_of(pending):
            return pending, "duplicate"
        if pending is not None:
            if pending["staff_role"] != role:
                await repo.set_staff_role(conn, pending["id"], role)
                pending = await repo.get(conn, pending["id"])
                assert pending is not None
            resent = await _reissue(
                conn, deps, pending, None, reason="staff", locale=locale, key=key
            )
            return resent, "resent"
        now = deps.clock()
        days = await repo.expiry_days(conn)
        expires_at = domain.expiry_for(now, days)
        token, token_hash = domain.new_token()
        invitation_id, mail_id = uuid.uuid4(), uuid.uuid4()
        created = await repo.insert(
            conn,
            invitation_id=invitation_id,
            email=email,
            email_lower=email_lower,
            portal_id=None,
            token_hash=token_hash,
            sent_at=now,
            expires_at=expires_at,
            mail_id=mail_id,
            sub_client=None,
            invited_by=invited_by,
            idempotency_key=key,
            expires_in_days=days,
            staff_role=role,
            locale=locale,
            invited_by_id=invited_by_id,
        )
        if created is None:
            continue  # a concurrent invitation of this address won: resend that one
        await sends.record_link(conn, created, token_hash, now, expires_at, sends.FIRST)
        await staff_events.announce_sent(
            conn, deps, "invitation.staff.created", created, token, mail_id, expires_at, days
        )
        log.info("staff_invitation_created", invitation_id=str(invitation_id), role=role)
        return created, "created"
    raise Conflict("The invitation changed while we sent it; try again.", code="conflict")


async def open_staff_invitations(deps: Deps) -> list[Row]:
    """Pending and expired staff invitations, newest first (at most 200: a team's)."""
    async with connection(deps.db) as conn:
        return await repo.open_staff_invitations(conn, MAX_LISTED)
