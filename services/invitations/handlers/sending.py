"""Invite, resend and revoke: every send is a new token, a new expiry and a mail job
written through the outbox with the change."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from libs.common.db import Conn, Db
from libs.common.errors import Conflict, NotFound, Unavailable
from libs.common.events import (
    InvitationClosed,
    InvitationCreated,
    InvitationResent,
    MailRequested,
)

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from .base import CheckedInvite, Deps, InviteCommand, Outcome, Row, emit, log


async def resolve_portal(
    conn: Db, deps: Deps, portal_id: uuid.UUID | None, slug: str | None
) -> PortalInfo:
    """From the replica, or (a portal created a moment ago) from the portals service."""
    if portal_id is None and not slug:
        raise NotFound("Give the portal's id or slug.", code="missing_portal")
    row = await (
        repo.get_portal(conn, portal_id) if portal_id else repo.get_portal_by_slug(conn, slug or "")
    )
    if row is not None:
        return PortalInfo(
            row["portal_id"], row["slug"], row["title"], row["status"], row["revision"]
        )
    if portal_id is not None:
        fetched = await deps.directory.fetch_portal(portal_id)
    else:
        fetched = await deps.directory.fetch_portal_by_slug(slug or "")
    if fetched is None:
        raise NotFound("There is no such portal.", code="portal_not_found")
    await repo.upsert_portal(conn, fetched)
    return fetched


async def _refresh_portal(conn: Db, deps: Deps, portal: PortalInfo) -> PortalInfo:
    """The replica may lag a portal that was made Active a moment ago: before refusing,
    ask the owner. If it can't answer, the replica's answer stands."""
    try:
        fresh = await deps.directory.fetch_portal(portal.portal_id)
    except Unavailable:
        return portal
    if fresh is None or fresh.revision <= portal.revision:
        return portal
    await repo.upsert_portal(conn, fresh)
    return fresh


async def check_invite(conn: Db, deps: Deps, command: InviteCommand) -> CheckedInvite:
    """The rules that need the replica or other services; no invitation is written. Given
    the pool, it holds no connection while it waits on identity or portals."""
    email = domain.normalise_email(command.email)
    portal = await resolve_portal(conn, deps, command.portal_id, command.portal_slug)
    if portal.status != "active":
        portal = await _refresh_portal(conn, deps, portal)
    domain.check_portal_accepts(portal.status)
    user_id = await deps.directory.find_user_id(email)
    if user_id is not None and portal.portal_id in await deps.directory.user_portal_ids(user_id):
        raise Conflict(
            "This person already has access to the portal; no invitation is needed.",
            code="already_has_access",
        )
    return CheckedInvite(command=command, email=email, portal=portal)


async def record_invite(
    conn: Conn, deps: Deps, checked: CheckedInvite, *, key_checked: bool = False
) -> tuple[Row, Outcome]:
    """Create the invitation, or resend the pending one, or return the one this
    idempotency key already made. Runs inside the caller's transaction; the unique
    indexes decide races, and the loser looks again. ``key_checked``: the caller looked
    the key up a moment ago, so the first round needn't."""
    command, portal = checked.command, checked.portal
    key = command.idempotency_key
    email_lower = domain.email_key(checked.email)
    for attempt in range(5):
        if key is not None and not (key_checked and attempt == 0):
            existing = await repo.find_by_key(conn, key)
            if existing is not None:
                return existing, "duplicate"
        pending = await repo.find_pending_for_update(conn, portal.portal_id, email_lower)
        if pending is not None and key is not None and pending["idempotency_key"] == key:
            # The same key committed between our two looks (each sees a new snapshot).
            return pending, "duplicate"
        if pending is not None:
            return await _reissue(conn, deps, pending, portal.title, key=key), "resent"
        now = deps.clock()
        expires_at = domain.expiry_for(now, await repo.expiry_days(conn))
        token, token_hash = domain.new_token()
        invitation_id, mail_id = uuid.uuid4(), uuid.uuid4()
        created = await repo.insert(
            conn,
            invitation_id=invitation_id,
            email=checked.email,
            email_lower=email_lower,
            portal_id=portal.portal_id,
            token_hash=token_hash,
            sent_at=now,
            expires_at=expires_at,
            mail_id=mail_id,
            sub_client=command.sub_client,
            invited_by=command.invited_by,
            idempotency_key=key,
        )
        if created is None:
            continue
        announced = InvitationCreated(
            invitation_id=invitation_id,
            portal_id=portal.portal_id,
            email=checked.email,
            expires_at=expires_at,
            invited_by=command.invited_by,
            idempotency_key=key,
            sub_client=command.sub_client,
        )
        mail = _mail_job(
            deps,
            mail_id,
            invitation_id,
            checked.email,
            token,
            portal.title,
            expires_at,
            command.invited_by,
        )
        await emit(conn, "invitation.created", announced, ("mail.requested", mail))
        log.info(
            "invitation_created", invitation_id=str(invitation_id), portal_id=str(portal.portal_id)
        )
        return created, "created"
    raise Conflict("The invitation changed while we sent it; try again.", code="conflict")


async def invite(pool: asyncpg.Pool, deps: Deps, command: InviteCommand) -> tuple[Row, Outcome]:
    if command.idempotency_key is not None:
        existing = await repo.find_by_key(pool, command.idempotency_key)
        if existing is not None:
            return existing, "duplicate"
    # Checked on the pool: no connection is held across the calls to identity and portals
    # (holding one capped concurrent invites at the pool's size).
    checked = await check_invite(pool, deps, command)
    async with pool.acquire() as conn, conn.transaction():
        return await record_invite(conn, deps, checked, key_checked=True)


async def _reissue(
    conn: Conn, deps: Deps, row: Row, portal_title: str | None, *, key: str | None = None
) -> Row:
    """A new token, a new expiry from the current setting, a new mail job."""
    now = deps.clock()
    expires_at = domain.expiry_for(now, await repo.expiry_days(conn))
    token, token_hash = domain.new_token()
    mail_id = uuid.uuid4()
    updated = await repo.reissue(
        conn,
        row["id"],
        token_hash=token_hash,
        sent_at=now,
        expires_at=expires_at,
        mail_id=mail_id,
        idempotency_key=key,
    )
    resent = InvitationResent(
        invitation_id=row["id"],
        portal_id=row["portal_id"],
        email=row["email"],
        expires_at=expires_at,
    )
    mail = _mail_job(
        deps,
        mail_id,
        row["id"],
        row["email"],
        token,
        portal_title or "",
        expires_at,
        row["invited_by"],
    )
    await emit(conn, "invitation.resent", resent, ("mail.requested", mail))
    log.info("invitation_resent", invitation_id=str(row["id"]), send_count=updated["send_count"])
    return updated


def _mail_job(
    deps: Deps,
    mail_id: uuid.UUID,
    invitation_id: uuid.UUID,
    to: str,
    token: str,
    portal_title: str,
    expires_at: datetime,
    invited_by: str | None,
) -> MailRequested:
    """The only place the token leaves this service: the private mail job."""
    context = domain.mail_context(
        public_base=deps.settings.public_base,
        token=token,
        portal_title=portal_title,
        expires_at=expires_at,
        invited_by=invited_by,
    )
    return MailRequested(
        mail_id=mail_id,
        template="invitation",
        to=to,
        ref_type="invitation",
        ref_id=invitation_id,
        context=context,
    )


async def resend(pool: asyncpg.Pool, deps: Deps, invitation_id: uuid.UUID) -> Row:
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, invitation_id)
        domain.check_can_resend(row["status"])
        try:
            async with conn.transaction():
                return await _reissue(conn, deps, row, row["portal_title"])
        except asyncpg.UniqueViolationError:
            # Resending an expired invitation while a newer one to the same person and
            # portal is pending: two pending links would break the one-pending rule.
            raise Conflict(
                "A newer pending invitation exists for this email and portal; resend that one.",
                code="invitation_pending",
            ) from None


async def revoke(pool: asyncpg.Pool, deps: Deps, invitation_id: uuid.UUID) -> Row:
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, invitation_id)
        if not domain.must_revoke(row["status"]):
            return row
        updated = await repo.revoke(conn, invitation_id, deps.clock())
        await emit(
            conn,
            "invitation.revoked",
            InvitationClosed(
                invitation_id=row["id"], portal_id=row["portal_id"], email=row["email"]
            ),
        )
        log.info("invitation_revoked", invitation_id=str(invitation_id))
        return updated


async def _locked(conn: Conn, invitation_id: uuid.UUID) -> Row:
    row = await repo.get_for_update(conn, invitation_id)
    if row is None:
        raise NotFound("There is no such invitation.", code="invitation_not_found")
    return row
