"""The link a person clicks: validate it (never used up), reserve it (spent, for exactly
one request, before any account or access exists), then accept it under that claim."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import NoReturn

import asyncpg

from libs.common.db import Db, connection, transaction
from libs.common.errors import Conflict, DomainError, NotFound, Unavailable
from libs.common.events import EventData, InvitationAccepted

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from . import staff_events
from .base import Deps, Row, about, emit, log
from .staff_sender import check_sender
from .withdrawing import withdraw_mails


def _invalid() -> NotFound:
    return NotFound(
        "This invitation link is not valid. Check the link in your email.",
        code="invitation_invalid",
    )


def _token_hash(token: str) -> str:
    if not token or len(token) > domain.MAX_TOKEN_LENGTH:
        raise _invalid()
    return domain.hash_token(token)


async def _refuse_earlier_link(conn: Db, token_hash: str) -> NoReturn:
    """A link that isn't any invitation's current one: one we sent earlier says what
    became of it (replaced, revoked, used); anything else is not valid."""
    links = await repo.find_links(conn, token_hash)
    if not links:
        raise _invalid()
    if links[0]["group_id"] is not None:
        domain.earlier_group_link(link["status"] for link in links)
    domain.check_earlier_link(links[0]["status"])
    raise AssertionError("check_earlier_link always raises")


async def _replaced_instead(conn: Db, token_hash: str) -> None:
    """A group's link that nothing can use any more, though a Resend moved some of its
    invitations, still open, to a newer link: that is what the person needs to hear."""
    links = await repo.find_links(conn, token_hash)
    if any(not link["current"] and link["status"] in ("pending", "expired") for link in links):
        domain.check_earlier_link("pending")


def _link_row(row: Row) -> domain.LinkRow:
    return domain.LinkRow(
        status=row["status"],
        expires_at=row["expires_at"],
        claim_until=row["accept_claim_until"],
        portal_active=row["portal_status"] == "active",
    )


async def _fresh_portals(deps: Deps, rows: list[Row]) -> None:
    """Before a link is judged, ask portals (the owner) how its portals stand: an
    acceptance takes only the ones still Active, and the replica may lag a portal archived
    a moment ago. If portals can't answer, the replica decides."""
    wanted = {r["portal_id"] for r in rows if r["status"] in ("pending", "accepting")}

    async def one(portal_id: uuid.UUID) -> PortalInfo | None:
        try:
            return await deps.directory.fetch_portal(portal_id)
        except Unavailable:
            return None

    for fresh in await asyncio.gather(*(one(p) for p in sorted(wanted))):
        if fresh is not None:
            await repo.upsert_portal(deps.db, fresh)


async def _usable_alone(deps: Deps, token_hash: str, rows: list[Row]) -> list[Row]:
    """A link for one invitation, as validate shows it: usable (an acceptance under way
    too, which only it can finish), else why not; while its portal isn't Active it waits,
    pending, as a group's link waits for its portals. Portals is asked, so a portal
    archived a moment ago counts."""
    domain.check_token_usable(rows[0]["status"], rows[0]["expires_at"], deps.clock())
    if rows[0]["status"] != "pending" or rows[0]["portal_id"] is None:
        return rows
    await _fresh_portals(deps, rows)
    async with connection(deps.db) as conn:
        rows = await repo.find_all_by_token(conn, token_hash)
        if not rows:  # a Resend replaced the link a moment ago
            await _refuse_earlier_link(conn, token_hash)
    domain.check_token_usable(rows[0]["status"], rows[0]["expires_at"], deps.clock())
    if rows[0]["status"] == "pending":
        domain.check_portal_takes_acceptance(rows[0]["portal_id"], rows[0]["portal_status"])
    return rows


@dataclass(frozen=True)
class Account:
    """What identity says of a link's address: an account, and whether it is disabled."""

    exists: bool
    disabled: bool


async def validate(deps: Deps, token: str) -> tuple[list[Row], Account]:
    """The invitations behind a link that accepting it would take now (one, or those of a
    group), and whether their email has an account, and a disabled one. Never uses it."""
    token_hash = _token_hash(token)
    async with connection(deps.db) as conn:
        rows = await repo.find_all_by_token(conn, token_hash)
        if not rows:
            await _refuse_earlier_link(conn, token_hash)
    if rows[0]["group_id"] is None:
        rows = await _usable_alone(deps, token_hash, rows)
        if rows[0]["status"] == "pending":
            await check_sender(deps, rows[0])  # a staff invitation's sender: still may?
    else:
        await _fresh_portals(deps, rows)
        async with connection(deps.db) as conn:
            rows = await repo.find_all_by_token(conn, token_hash)
        try:
            taken = domain.usable_in_group([_link_row(r) for r in rows], deps.clock())
        except DomainError:
            await _replaced_instead(deps.db, token_hash)
            raise
        rows = [rows[n] for n in taken]
    # An acceptance under way may have made its account already: the same link finishes
    # it through the set-password form (identity's ensure finds that account, or says the
    # address belongs to someone else and the page asks them to log in).
    if rows[0]["status"] == "accepting":
        return rows, Account(exists=False, disabled=False)
    user = await deps.directory.find_user(rows[0]["email"])
    # Disabled: its owner can't log in to accept until someone enables it, and the page
    # says so (a log in would answer "The email or password is incorrect.").
    return rows, Account(exists=user is not None, disabled=bool(user and user.get("disabled")))


def _used() -> Conflict:
    return Conflict("This invitation has already been used.", code="invitation_used")


async def reserve(deps: Deps, token: str) -> tuple[list[Row], uuid.UUID]:
    """Spend the link for one request, which gets the claim that finishes it. From here a
    revoke, a resend or the expiry sweep can't take the invitation, so none of them can
    land between the account and the access. A group's link takes each of its
    invitations still pending whose portal is still Active; the others (revoked, or an
    Archived portal) stay as they are and don't stop it."""
    token_hash = _token_hash(token)
    now = deps.clock()
    claim = uuid.uuid4()
    async with connection(deps.db) as conn:
        row = await repo.reserve(conn, token_hash, claim, now, now + domain.ACCEPT_LEASE)
    if row is not None:
        # Checked once the link is spent for this request, so no revoke can come between
        # the answer and the account: refused, the invitation is revoked, claim and all.
        try:
            await check_sender(deps, row)
        except Unavailable:
            # Identity away: the claim never reaches the gateway, which can't release it,
            # so the link is handed back here rather than spent until the lease ends.
            await release(deps, token, claim, reopen=True)
            raise
        log.info("invitation_reserved", invitation_id=str(row["id"]))
        return [row], claim
    async with connection(deps.db) as conn:
        current = await repo.find_all_by_token(conn, token_hash)
        if not current:
            await _refuse_earlier_link(conn, token_hash)
        if current[0]["group_id"] is None:
            domain.check_reservable(
                current[0]["status"],
                current[0]["expires_at"],
                current[0]["accept_claim_until"],
                now,
            )
            if current[0]["status"] == "pending":
                domain.check_portal_takes_acceptance(
                    current[0]["portal_id"], current[0]["portal_status"]
                )
            raise _used()
    await _fresh_portals(deps, current)
    now = deps.clock()
    async with transaction(deps.db) as conn:
        rows = await repo.lock_group(conn, current[0]["group_id"])
        mine = [r for r in rows if r["token_hash"] == token_hash]
        if not mine:  # a Resend replaced the link a moment ago
            await _refuse_earlier_link(conn, token_hash)
        try:
            taken = domain.acceptable_in_group([_link_row(r) for r in mine], now)
        except DomainError:
            await _replaced_instead(conn, token_hash)
            raise
        reserved = await repo.reserve_ids(
            conn, [mine[n]["id"] for n in taken], claim, now + domain.ACCEPT_LEASE
        )
    log.info(
        "invitation_group_reserved",
        group_id=str(current[0]["group_id"]),
        invitation_ids=[str(r["id"]) for r in reserved],
    )
    return reserved, claim


async def accept(deps: Deps, token: str, claim: uuid.UUID, user_id: uuid.UUID) -> list[Row]:
    """Finish the acceptance this claim holds and announce it, once per invitation
    (portals grants from each event, so access can't be lost after this)."""
    token_hash = _token_hash(token)
    now = deps.clock()
    async with transaction(deps.db) as conn:
        rows = await repo.accept(conn, token_hash, claim, user_id, now)
        if not rows:
            if not await repo.find_all_by_token(conn, token_hash):
                raise _invalid()
            raise _used()  # another request took the acceptance over
        # The link is used: an email of it still waiting in the mailer is not sent.
        await withdraw_mails(conn, rows)
        staff = [row for row in rows if staff_events.is_staff(row)]
        for row in staff:  # a staff invitation is never in a group: its own event
            await staff_events.announce_accepted(conn, row, user_id)
            log.info("staff_invitation_accepted", invitation_id=str(row["id"]))
        accepted: list[tuple[str, EventData]] = [
            (
                "invitation.accepted",
                InvitationAccepted(
                    **about(row),
                    user_id=user_id,
                    sub_client=row["sub_client"],
                    idempotency_key=row["idempotency_key"],
                ),
            )
            for row in rows
            if not staff_events.is_staff(row)
        ]
        if accepted:
            first_type, first = accepted[0]
            await emit(conn, first_type, first, *accepted[1:])
    for row in rows:
        log.info("invitation_accepted", invitation_id=str(row["id"]), user_id=str(user_id))
    return rows


async def release(deps: Deps, token: str, claim: uuid.UUID, *, reopen: bool) -> None:
    """A driver that failed lets go: with ``reopen`` (it knows nothing was made) the
    invitation is pending again, revocable and resendable; otherwise the same link may
    take the acceptance over at once. A claim no longer held changes nothing."""
    token_hash = _token_hash(token)
    async with connection(deps.db) as conn:
        if reopen:
            try:
                async with conn.transaction():
                    if await repo.reopen(conn, token_hash, claim):
                        log.info("invitation_reopened")
            except asyncpg.UniqueViolationError:
                pass  # a newer invitation of this person to this portal is pending
        # What the claim still holds (not reopened, or a group's invitation taken over
        # from an earlier try) is open to the same link at once.
        await repo.end_claim(conn, token_hash, claim, deps.clock())
