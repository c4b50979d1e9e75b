"""Invitation Reminder (Settings → Access & Login): Off, or 1 or 3 days before expiry.

A periodic sweep, like the expiry sweep: every pending invitation of an Active portal
that enters the window gets one reminder email with a fresh link (its earlier link then
says "replaced"; the expiry stays), and ``invitation.reminded``. Each reminder is taken
by ``UPDATE … WHERE reminded_at IS NULL RETURNING`` in the transaction that writes its
mail job and event to the outbox, so it goes exactly once however many replicas sweep,
and a restart (or a crash midway) neither loses nor repeats one: the state is the row.
A reminder the caps on new links refuse waits for a later round (at most an hour)."""

from __future__ import annotations

import uuid
from datetime import datetime

from libs.common.context import new_id, set_correlation_id
from libs.common.db import Conn, connection, transaction
from libs.common.errors import RateLimited
from libs.common.events import EventData, InvitationReminded, MailRequested

from .. import domain
from .. import repository as repo
from ..metrics import REMINDERS
from . import sends
from .base import Deps, Row, about, emit, log
from .sending import account_exists
from .withdrawing import withdraw_mails


class _Deferred(Exception):
    """The caps refused this reminder for now: undo its claim."""


async def remind_once(deps: Deps, *, batch: int = 200) -> int:
    """Send every reminder that is due now; returns how many went."""
    set_correlation_id(new_id())
    async with connection(deps.db) as conn:
        days = await repo.reminder_days(conn)
    if days == 0:
        return 0
    now = deps.clock()
    sent = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with connection(deps.db) as conn:
            rows = await repo.reminder_candidates(conn, now, days, after, batch)
        for row in rows:
            has_account = await account_exists(deps, row["email"])
            sent += await _remind(deps, row["id"], row["group_id"], now, has_account)
        if len(rows) < batch:
            break
        after = (rows[-1]["expires_at"], rows[-1]["id"])
    if sent:
        log.info("invitation_reminders_sent", count=sent)
    return sent


async def _remind(
    deps: Deps,
    invitation_id: uuid.UUID,
    group_id: uuid.UUID | None,
    now: datetime,
    has_account: bool = False,
) -> int:
    try:
        async with transaction(deps.db) as conn:
            if group_id is None:
                row = await repo.claim_reminder(conn, invitation_id, now)
                claimed = [row] if row is not None else []
            else:
                claimed = await _claim_group(conn, invitation_id, group_id, now)
            if not claimed:
                return 0  # another replica took it, or it changed meanwhile
            try:
                await sends.check_cap(conn, deps, claimed[0], now, claimed[1:])
            except RateLimited as exc:
                raise _Deferred(exc.message) from None
            await _send(conn, deps, claimed, now, has_account)
    except _Deferred:
        log.info("invitation_reminder_deferred", invitation_id=str(invitation_id))
        REMINDERS.labels("deferred").inc()
        return 0
    log.info("invitation_reminded", invitation_id=str(invitation_id))
    REMINDERS.labels("sent").inc()
    return 1


async def _claim_group(
    conn: Conn, invitation_id: uuid.UUID, group_id: uuid.UUID, now: datetime
) -> list[Row]:
    """A group's invitation: one reminder for it and the invitations of its group that
    share its link (same expiry) and still want one, in one email. Empty when another
    replica took them."""
    rows = await repo.lock_group(conn, group_id)
    row = next((r for r in rows if r["id"] == invitation_id), None)
    if row is None:
        return []
    same_link = [
        r["id"]
        for r in rows
        if r["token_hash"] == row["token_hash"]
        and (r["id"] == invitation_id or r["portal_status"] == "active")
    ]
    claimed = await repo.claim_reminders(conn, same_link, now)
    if all(r["id"] != invitation_id for r in claimed):
        return []
    # The invitation the sweep found first, then the others.
    return sorted(claimed, key=lambda r: r["id"] != invitation_id)


async def _send(conn: Conn, deps: Deps, rows: list[Row], now: datetime, has_account: bool) -> None:
    token, token_hash = domain.new_token()
    mail_id = uuid.uuid4()
    reminded: list[tuple[str, EventData]] = []
    for row in rows:
        await repo.relink(
            conn, row["id"], token_hash=token_hash, mail_id=mail_id, reason=sends.REMINDER
        )
        await sends.record_link(conn, row, token_hash, now, row["expires_at"], sends.REMINDER)
        event = InvitationReminded(**about(row), expires_at=row["expires_at"])
        reminded.append(("invitation.reminded", event))
    first_type, first = reminded[0]
    await emit(
        conn,
        first_type,
        first,
        *reminded[1:],
        ("mail.requested", _mail(deps, rows, token, mail_id, has_account)),
    )
    # The earlier link's email, if still waiting in the mailer, would carry a dead link.
    await withdraw_mails(conn, rows)


def _mail(
    deps: Deps, rows: list[Row], token: str, mail_id: uuid.UUID, has_account: bool
) -> MailRequested:
    """The reminder email: the invitation's words, with the fresh link (sealed: only the
    mailer opens it); a group's names each portal it is for."""
    row = rows[0]
    ref = ("invitation_group", row["group_id"]) if len(rows) > 1 else ("invitation", row["id"])
    context = domain.mail_context(
        public_base=deps.settings.public_base,
        token=token,
        portal_title=row["portal_title"] or "",
        expires_at=row["expires_at"],
        invited_by=row["invited_by"],
        # The reminder repeats what the invitation said to the person.
        personal_message=row["personal_message"],
        invitee_name=row["invitee_name"],
        portal_titles=[r["portal_title"] or "" for r in rows],
        has_account=has_account,
    )
    return MailRequested(
        mail_id=mail_id,
        template="invitation_reminder",
        to=row["email"],
        ref_type=ref[0],
        ref_id=ref[1],
        context=deps.settings.sealer().seal(context),
        locale=row["locale"],
    )
