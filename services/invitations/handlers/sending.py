"""Invite, resend and revoke: every send is a new token, a new expiry and a mail job
written through the outbox with the change."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from libs.common.batching import GroupCommit
from libs.common.db import DATABASE_AWAY, Conn, Db, connection, transaction
from libs.common.email import email_key, normalise_email
from libs.common.errors import Conflict, InvalidInput, NotFound, Unavailable
from libs.common.events import (
    EventData,
    InvitationCreated,
    InvitationResent,
    MailJobs,
    MailRequested,
)
from libs.common.i18n import check_locale
from libs.common.tracing import carrier

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from . import sends, staff_events
from .base import (
    CheckedGroup,
    CheckedInvite,
    Deps,
    InviteCommand,
    Outcome,
    Row,
    about,
    closed_event,
    emit,
    envelope,
    log,
)
from .withdrawing import withdraw_mails


async def resolve_portal(
    deps: Deps, portal_id: uuid.UUID | None, slug: str | None, *, look: repo.FirstLook | None = None
) -> PortalInfo:
    """From the replica, or (a portal created a moment ago) from the portals service.
    ``look``: the replica was read a moment ago (``repository.first_look``)."""
    if portal_id is None and not slug:
        raise NotFound("Give the portal's id or slug.", code="missing_portal")
    db = deps.db
    if look is not None:
        held = look.portal
    else:
        row = await (
            repo.get_portal(db, portal_id) if portal_id else repo.get_portal_by_slug(db, slug or "")
        )
        held = None if row is None else PortalInfo.of_row(row)
    if held is not None:
        return held
    if portal_id is not None:
        fetched = await deps.directory.fetch_portal(portal_id)
    else:
        fetched = await deps.directory.fetch_portal_by_slug(slug or "")
    if fetched is None:
        raise NotFound("There is no such portal.", code="portal_not_found")
    await repo.upsert_portal(db, fetched)
    return fetched


async def _refresh_portal(deps: Deps, portal: PortalInfo) -> PortalInfo:
    """The replica may lag a portal that was made Active a moment ago: before refusing,
    ask the owner. If it can't answer, the replica's answer stands."""
    try:
        fresh = await deps.directory.fetch_portal(portal.portal_id)
    except Unavailable:
        return portal
    if fresh is None or fresh.revision <= portal.revision:
        return portal
    await repo.upsert_portal(deps.db, fresh)
    return fresh


async def check_invite(
    deps: Deps, command: InviteCommand, *, look: repo.FirstLook | None = None
) -> CheckedInvite:
    """The rules that need the replica or other services; no invitation is written. On
    the pool (``deps.db``), it holds no connection while it waits on identity or portals.
    ``look``: the replica was read a moment ago."""
    email = normalise_email(command.email)
    if command.expires_in_days is not None:
        domain.check_link_expiry(command.expires_in_days)
    domain.check_inviter(command.invited_by)
    message = domain.clean_personal_message(command.personal_message)
    locale = check_locale(command.locale)
    portal = await resolve_portal(deps, command.portal_id, command.portal_slug, look=look)
    if command.portal_id is not None and command.portal_slug not in (None, "", portal.slug):
        raise InvalidInput(
            f"portal_id names the portal {portal.slug!r}, portal_slug {command.portal_slug!r}:"
            " give one of them.",
            code="ambiguous_portal",
        )
    if portal.status != "active":
        portal = await _refresh_portal(deps, portal)
    domain.check_portal_accepts(portal.status)
    user_id = await deps.directory.find_user_id(email)
    if user_id is not None and portal.portal_id in await deps.directory.user_portal_ids(user_id):
        raise Conflict(
            "This person already has access to the portal; no invitation is needed.",
            code="already_has_access",
        )
    return CheckedInvite(
        command=command,
        email=email,
        portal=portal,
        personal_message=message,
        locale=locale,
        has_account=user_id is not None,
    )


async def account_exists(deps: Deps, email: str) -> bool:
    """Whether the address has an account, for the words of its email. Identity away: the
    words for a newcomer (the link's page asks what the account needs)."""
    try:
        return await deps.directory.find_user_id(email) is not None
    except Unavailable:
        return False


async def record_invite(
    deps: Deps,
    checked: CheckedInvite,
    *,
    key_checked: bool = False,
    expiry_days: int | None = None,
) -> tuple[Row, Outcome]:
    """Create the invitation, or resend the pending one, or return the one this
    idempotency key already made. A first invitation is one statement; anything else runs
    in one transaction (in a caller's, a savepoint), where the unique indexes decide races
    and the loser looks again. ``key_checked``: the caller looked the key up a moment ago,
    so the first round needn't; ``expiry_days``: the setting, read a moment ago."""
    days = checked.command.expires_in_days or expiry_days or await repo.expiry_days(deps.db)
    # Prepared once: written by the one statement, or else by the transaction if it finds
    # nothing pending after all (the statement wrote nothing).
    first = prepare_first(deps, checked, deps.clock(), days)
    created = await _first_at_once(deps, first)
    if created is not None:
        return created, "created"
    return await record_not_first(deps, checked, first, key_checked=key_checked)


async def record_not_first(
    deps: Deps, checked: CheckedInvite, first: FirstSend, *, key_checked: bool = False
) -> tuple[Row, Outcome]:
    """``record_invite`` once its one statement wrote nothing (a pending invitation, a key
    used before, a race): in a transaction, with ``first`` written if nothing is pending
    after all."""
    async with transaction(deps.db) as conn:
        command, portal = checked.command, checked.portal
        key = command.idempotency_key
        email_lower = email_key(checked.email)
        if key is not None:
            await check_key_not_a_group(conn, key)
        for attempt in range(5):
            if key is not None and not (key_checked and attempt == 0):
                existing = await repo.find_by_key(conn, key)
                if existing is not None:
                    return existing, "duplicate"
            pending = await repo.find_pending_for_update(conn, portal.portal_id, email_lower)
            if pending is not None and key is not None and key in _keys_of(pending):
                # The same key committed between our two looks (each sees a new snapshot), or
                # the same request resent it a moment ago (a double click on inviting again).
                return pending, "duplicate"
            if pending is not None:
                # Inviting again resends (a group's invitation: the group's link, for each of
                # its invitations that can take it); options given this time replace the
                # pending ones.
                mates: list[Row] = []
                if pending["group_id"] is not None:
                    rows = await repo.lock_group(conn, pending["group_id"])
                    mates = await group_mates(conn, rows, pending)
                reissued = await _reissue(
                    conn,
                    deps,
                    pending,
                    portal.title,
                    key=key,
                    reason=command.resend_reason,
                    expires_in_days=command.expires_in_days,
                    personal_message=checked.personal_message,
                    invitee_name=command.invitee_name,
                    mates=mates,
                    locale=checked.locale,
                    has_account=checked.has_account,
                )
                return reissued, "resent"
            (row,) = first.rows
            created = await repo.insert(conn, **vars(row))
            if created is None:
                continue
            await write_first_sends(conn, [first])
            log.info(
                "invitation_created",
                invitation_id=str(row.invitation_id),
                portal_id=str(portal.portal_id),
            )
            return created, "created"
        raise Conflict("The invitation changed while we sent it; try again.", code="conflict")


def _keys_of(row: Row) -> tuple[str | None, str | None]:
    """The keys a request finds an invitation under: the one that made it, and the one
    that last sent it a link (inviting again)."""
    return row["idempotency_key"], row["last_request_key"]


@dataclass(frozen=True)
class FirstSend:
    """One email's first invitations ready to write: their rows (one per portal, each with
    the email's first link's hash) and the events that go with them."""

    rows: tuple[repo.NewInvitation, ...]
    created: tuple[InvitationCreated, ...]
    mail: MailRequested

    def events(self) -> tuple[tuple[str, EventData], ...]:
        """Each ``invitation.created`` then ``mail.requested``, in the order they are
        written."""
        return (*(("invitation.created", c) for c in self.created), ("mail.requested", self.mail))


def prepare_first(
    deps: Deps,
    checked: CheckedInvite | CheckedGroup,
    now: datetime,
    days: int,
    group_id: uuid.UUID | None = None,
) -> FirstSend:
    """The first invitation to each of the checked portals and the one email with their
    link: one portal's, or (``group_id``) a group's."""
    command = checked.command
    expires_at = domain.expiry_for(now, days)
    token, token_hash = domain.new_token()
    mail_id = uuid.uuid4()
    rows = tuple(
        repo.NewInvitation(
            invitation_id=uuid.uuid4(),
            email=checked.email,
            email_lower=email_key(checked.email),
            portal_id=portal.portal_id,
            token_hash=token_hash,
            sent_at=now,
            expires_at=expires_at,
            mail_id=mail_id,
            sub_client=command.sub_client,
            invited_by=command.invited_by,
            # A group's key is the group's: each row's events carry it.
            idempotency_key=command.idempotency_key if group_id is None else None,
            expires_in_days=days,
            expiry_chosen=command.expires_in_days is not None,
            personal_message=checked.personal_message,
            invitee_name=checked.invitee_name,
            locale=checked.locale,
            group_id=group_id,
        )
        for portal in checked.portals
    )
    # invitation.created says what the row says (the fields are named alike), with the
    # request's key: a group's is the group's, not its rows'.
    created = tuple(
        InvitationCreated.model_validate(row, from_attributes=True).model_copy(
            update={"idempotency_key": command.idempotency_key}
        )
        for row in rows
    )
    mail = _mail_job(
        deps,
        mail_id,
        (INVITATION_REF, rows[0].invitation_id) if group_id is None else (GROUP_REF, group_id),
        checked.email,
        token,
        [portal.title for portal in checked.portals],
        expires_at,
        command.invited_by,
        expires_in_days=days,
        personal_message=checked.personal_message,
        invitee_name=checked.invitee_name,
        locale=checked.locale,
        has_account=checked.has_account,
    )
    return FirstSend(rows, created, mail)


async def write_first_sends(conn: Conn, firsts: Sequence[FirstSend]) -> None:
    """What follows the rows of these new invitations, in the same transaction: their
    first links and their events, in one statement each however many there are: one
    email's ``invitation.created`` then its ``mail.requested``; for several, every
    ``invitation.created`` then one ``mail.requested`` version 2 with all the jobs."""
    await repo.record_first_links(conn, [row for f in firsts for row in f.rows], sends.FIRST)
    if len(firsts) == 1:
        events = list(firsts[0].events())
    else:
        # Many emails (a batch's chunk): their invitation.created, then all their mail
        # jobs in one message, one for the broker to carry and the mailer to record.
        events = [("invitation.created", c) for f in firsts for c in f.created]
        events.append(("mail.requested", MailJobs(jobs=[f.mail for f in firsts])))
    await emit(conn, *events[0], *events[1:])


async def _first_at_once(deps: Deps, first: FirstSend) -> Row | None:
    """The common case, a first invitation, as one statement: its row, its first link and
    its two events; on the pool, in the statement of every first invitation asked for
    meanwhile (``FirstWrites``). None when the person has a pending invitation here or the
    key was used before (or names a group): nothing was written, and the transaction's
    path decides, as it did before this shortcut."""
    (row,) = first.rows
    write = first_write(first)
    if deps.firsts is not None:
        created = await deps.firsts(write)
    else:
        created = (await repo.insert_firsts(deps.db, [write], sends.FIRST)).get(row.invitation_id)
    if created is not None:
        log_created(row)
    return created


def first_write(first: FirstSend) -> repo.FirstWrite:
    """A first invitation as ``repository.insert_firsts`` writes it, with its events built
    now, in the request's context: its correlation id and its trace."""
    (row,) = first.rows
    return row, [envelope(t, data) for t, data in first.events()], carrier()


def log_created(row: repo.NewInvitation) -> None:
    log.info(
        "invitation_created", invitation_id=str(row.invitation_id), portal_id=str(row.portal_id)
    )


# First invitations of concurrent requests in one statement, at most.
FIRSTS_AT_ONCE = 64


class FirstWrites:
    """The first invitations of concurrent requests, written together: while one
    statement is on its way, the ones asked for meanwhile wait and go in the next, one
    statement for all of them (``repository.insert_firsts``: each row with its link and
    its events, atomic). Each caller gets its own row, or None when a unique rule said no
    to it. A statement that fails for them all (a value one row can't store) is redone
    one row at a time, so a row never fails its neighbours."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = FIRSTS_AT_ONCE) -> None:
        self.pool = pool
        self._group = GroupCommit(
            self._write,
            max_batch=max_batch,
            # A database that is away fails them all, as it would fail each alone.
            redo_alone_if=lambda exc: not isinstance(exc, DATABASE_AWAY),
        )

    async def __call__(self, write: repo.FirstWrite) -> Row | None:
        return await self._group(write)

    async def _write(self, writes: Sequence[repo.FirstWrite]) -> list[Row | None]:
        written = await repo.insert_firsts(self.pool, writes, sends.FIRST)
        return [written.get(row.invitation_id) for row, _, _ in writes]


async def invite(deps: Deps, command: InviteCommand) -> tuple[Row, Outcome]:
    key = command.idempotency_key
    # The key, the portal and the expiry setting in one look (the common case: a new key,
    # a portal the replica holds).
    look = await repo.first_look(deps.db, key, command.portal_id, command.portal_slug)
    if key is not None and look.key_taken:
        existing = await repo.find_by_key(deps.db, key)
        if existing is not None:
            return existing, "duplicate"
    # Checked on the pool: no connection is held across the calls to identity and portals
    # (holding one capped concurrent invites at the pool's size).
    checked = await check_invite(deps, command, look=look)
    return await record_invite(deps, checked, key_checked=True, expiry_days=look.expiry_days)


async def _reissue(
    conn: Conn,
    deps: Deps,
    row: Row,
    portal_title: str | None,
    *,
    key: str | None = None,
    reason: str,
    expires_in_days: int | None = None,
    personal_message: str | None = None,
    invitee_name: str | None = None,
    mates: Sequence[Row] = (),
    locale: str | None = None,
    has_account: bool = False,
) -> Row:
    """A new token, a new expiry, a new mail job; refused (RateLimited) beyond the caps on
    new links. ``row`` is locked by the caller. The expiry keeps the length chosen for
    this invitation (or the one given now), else follows the current setting; the
    Personal Message stays unless a new one is given. ``mates``: the other invitations of
    its group (locked) that get the same link in the same email, with the same expiry
    and message."""
    now = deps.clock()
    await sends.check_cap(conn, deps, row, now, mates)
    chosen = expires_in_days is not None or row["expiry_chosen"]
    days = expires_in_days or (
        row["expires_in_days"] if row["expiry_chosen"] else await repo.expiry_days(conn)
    )
    message = personal_message if personal_message is not None else row["personal_message"]
    name = invitee_name if invitee_name is not None else row["invitee_name"]
    # The language stays unless a new one is given (like the Personal Message).
    language = locale if locale is not None else row["locale"]
    expires_at = domain.expiry_for(now, days)
    token, token_hash = domain.new_token()
    mail_id = uuid.uuid4()
    announced: list[tuple[str, EventData]] = []
    result: Row | None = None
    for each in (row, *mates):
        updated = await repo.reissue(
            conn,
            each["id"],
            token_hash=token_hash,
            sent_at=now,
            expires_at=expires_at,
            mail_id=mail_id,
            idempotency_key=key if each is row else None,
            expires_in_days=days,
            expiry_chosen=chosen,
            personal_message=message,
            invitee_name=name,
            reason=reason,
            locale=language,
        )
        result = result or updated
        await sends.record_link(conn, each, token_hash, now, expires_at, reason)
        if staff_events.is_staff(each):  # a staff invitation: no portal, never a group
            await staff_events.announce_sent(
                conn, deps, "invitation.staff.resent", updated, token, mail_id, expires_at, days
            )
            await withdraw_mails(conn, [each])
            log.info("staff_invitation_resent", invitation_id=str(each["id"]), reason=reason)
            return updated
        resent = InvitationResent(
            **about(each),
            expires_at=expires_at,
            expires_in_days=days,
            idempotency_key=updated["idempotency_key"],
            reason=reason,
            locale=language,
        )
        announced.append(("invitation.resent", resent))
        log.info(
            "invitation_resent",
            invitation_id=str(each["id"]),
            send_count=updated["send_count"],
            reason=reason,
        )
    assert result is not None
    mail = _mail_job(
        deps,
        mail_id,
        (GROUP_REF, row["group_id"]) if mates else (INVITATION_REF, row["id"]),
        row["email"],
        token,
        [portal_title or "", *(m["portal_title"] or "" for m in mates)],
        expires_at,
        row["invited_by"],
        expires_in_days=days,
        personal_message=message,
        invitee_name=name,
        locale=language,
        has_account=has_account,
    )
    first_type, first = announced[0]
    await emit(conn, first_type, first, *announced[1:], ("mail.requested", mail))
    # The earlier link's email, if still waiting in the mailer, would carry a dead link.
    await withdraw_mails(conn, [row, *mates])
    return result


async def group_mates(conn: Conn, rows: Sequence[Row], row: Row) -> list[Row]:
    """The other invitations of ``row``'s group (``rows``, locked) that a new link for it
    is also for: each that can be resent (pending or expired) to a portal still Active,
    unless a newer invitation to that portal is pending (it would be two)."""
    mates = [
        r
        for r in rows
        if r["id"] != row["id"]
        and r["status"] in ("pending", "expired")
        and r["portal_status"] == "active"
    ]
    expired = [m["portal_id"] for m in mates if m["status"] == "expired"]
    if expired:
        taken = await repo.pending_portal_ids(
            conn, row["email_lower"], expired, besides=[r["id"] for r in rows]
        )
        mates = [m for m in mates if m["status"] == "pending" or m["portal_id"] not in taken]
    return mates


# What a mail job is about (its outcome, mail.sent / .failed, comes back under it): one
# invitation, or a group whose invitations one email was sent for.
INVITATION_REF = "invitation"
GROUP_REF = "invitation_group"


def _mail_job(
    deps: Deps,
    mail_id: uuid.UUID,
    ref: tuple[str, uuid.UUID],
    to: str,
    token: str,
    portal_titles: Sequence[str],
    expires_at: datetime,
    invited_by: str | None,
    *,
    expires_in_days: int | None = None,
    personal_message: str | None = None,
    invitee_name: str | None = None,
    template: Literal["invitation", "invitation_reminder"] = "invitation",
    locale: str | None = None,
    has_account: bool = False,
) -> MailRequested:
    """The only place the token leaves this service: the private mail job."""
    context = domain.mail_context(
        public_base=deps.settings.public_base,
        token=token,
        portal_title=portal_titles[0] if portal_titles else "",
        expires_at=expires_at,
        invited_by=invited_by,
        expires_in_days=expires_in_days,
        personal_message=personal_message,
        invitee_name=invitee_name,
        portal_titles=portal_titles,
        has_account=has_account,
    )
    return MailRequested(
        mail_id=mail_id,
        template=template,
        to=to,
        ref_type=ref[0],
        ref_id=ref[1],
        context=deps.settings.sealer().seal(context),
        locale=locale,
    )


async def resend(
    deps: Deps,
    invitation_id: uuid.UUID,
    *,
    reason: str = "staff",
    staff: bool = False,
    shown_sent_at: datetime | None = None,
) -> Row:
    """Resend from the Invitations screen (``reason`` staff) or the API (api); ``staff``:
    a staff invitation, from the Users screen (each screen acts on its own kind only).
    ``shown_sent_at``: the sent time the screen showed; if it was sent again since (a
    double click, the back button), that send stands and nothing more goes."""
    async with connection(deps.db) as conn:
        current = await repo.get(conn, invitation_id)
    if current is None or staff_events.is_staff(current) != staff:
        raise NotFound("There is no such invitation.", code="invitation_not_found")
    domain.check_can_resend(current["status"])
    has_account = False
    if not staff:
        await _check_portal_for_resend(deps, current)
        has_account = await account_exists(deps, current["email"])
    async with transaction(deps.db) as conn:
        mates: list[Row] = []
        if current["group_id"] is not None:
            # A group's invitation: its link goes again, for each of the group's
            # invitations that can take it, in one email (only the latest link works).
            rows = await repo.lock_group(conn, current["group_id"])
            row = next(r for r in rows if r["id"] == invitation_id)
            domain.check_can_resend(row["status"])
            mates = await group_mates(conn, rows, row)
        else:
            row = await _locked(conn, invitation_id, staff=staff)
            domain.check_can_resend(row["status"])
        if shown_sent_at is not None and row["sent_at"] != shown_sent_at:
            log.info("invitation_resent_already", invitation_id=str(invitation_id))
            return row
        try:
            async with conn.transaction():
                return await _reissue(
                    conn,
                    deps,
                    row,
                    row["portal_title"],
                    reason=reason,
                    mates=mates,
                    has_account=has_account,
                )
        except asyncpg.UniqueViolationError:
            # Resending an expired invitation while a newer one to the same person and
            # portal is pending: two pending links would break the one-pending rule.
            raise Conflict(
                "A newer pending invitation exists for this email"
                + ("" if staff else " and portal")
                + "; resend that one.",
                code="invitation_pending",
            ) from None


async def _check_portal_for_resend(deps: Deps, row: Row) -> None:
    """Refuse (409 portal_not_active) a resend to a portal that isn't Active. Resends are
    made by people, one at a time: portals, the owner, is asked (the replica may lag a
    status changed a moment ago, either way); if it can't answer, the replica decides."""
    portal = await resolve_portal(deps, row["portal_id"], None)
    portal = await _refresh_portal(deps, portal)
    domain.check_portal_active_for_resend(portal.status, portal.title)


async def revoke(deps: Deps, invitation_id: uuid.UUID, *, staff: bool = False) -> Row:
    async with transaction(deps.db) as conn:
        row = await _locked(conn, invitation_id, staff=staff)
        if not domain.must_revoke(row["status"]):
            return row
        updated = await repo.revoke(conn, invitation_id, deps.clock())
        # Its email, if still waiting in the mailer, is never sent.
        await withdraw_mails(conn, [row])
        if staff:
            await staff_events.announce_closed(conn, "invitation.staff.revoked", row)
            log.info("staff_invitation_revoked", invitation_id=str(invitation_id))
            return updated
        # A group's other invitations keep their link: it no longer takes this one.
        await emit(conn, "invitation.revoked", closed_event(row))
        log.info("invitation_revoked", invitation_id=str(invitation_id))
        return updated


async def check_key_not_a_group(conn: Db, key: str) -> None:
    """An idempotency key names one request: one already used for an invitation to
    several portals can't make an invitation to one."""
    if await repo.group_key_taken(conn, key):
        raise key_reused()


def key_reused() -> Conflict:
    return Conflict(
        "This Idempotency-Key was already used for another invitation.",
        code="idempotency_key_reused",
    )


async def _locked(conn: Conn, invitation_id: uuid.UUID, *, staff: bool = False) -> Row:
    row = await repo.get_for_update(conn, invitation_id)
    if row is None or staff_events.is_staff(row) != staff:
        raise NotFound("There is no such invitation.", code="invitation_not_found")
    return row
