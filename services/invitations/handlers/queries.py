"""Reads and the Access & Login setting."""

from __future__ import annotations

import uuid
from datetime import datetime

from libs.common.cursor import page_of
from libs.common.db import connection, transaction
from libs.common.email import email_key, normalise_email
from libs.common.errors import NotFound
from libs.common.events import SettingsChanged

from .. import domain
from .. import repository as repo
from .base import Deps, Row, emit, log


async def get(deps: Deps, invitation_id: uuid.UUID) -> Row:
    """A client's invitation (a staff invitation is only on the Users screen's routes)."""
    async with connection(deps.db) as conn:
        row = await repo.get(conn, invitation_id)
    if row is None or row["staff_role"] is not None:
        raise NotFound("There is no such invitation.", code="invitation_not_found")
    return row


async def list_page(
    deps: Deps,
    *,
    status: str | None,
    portal_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    email: str | None = None,
) -> tuple[list[Row], bool]:
    """A page and whether more follow. ``email``: that address only (normalised, any case)."""
    email_lower = _email_filter(email)
    async with connection(deps.db) as conn:
        rows = await repo.page(
            conn,
            status=status,
            portal_id=portal_id,
            after=after,
            limit=limit + 1,
            now=deps.clock(),
            email_lower=email_lower,
        )
    return page_of(rows, limit)


async def status_counts(
    deps: Deps, *, portal_id: uuid.UUID | None, email: str | None
) -> dict[str, int]:
    """The Invitations screen's tabs: how many per status under the same filters."""
    email_lower = _email_filter(email)
    async with connection(deps.db) as conn:
        return await repo.status_counts(
            conn, portal_id=portal_id, email_lower=email_lower, now=deps.clock()
        )


def _email_filter(email: str | None) -> str | None:
    """The key the unique index uses: the normalised address, lower-cased."""
    return email_key(normalise_email(email)) if email else None


async def get_expiry_days(deps: Deps) -> int:
    async with connection(deps.db) as conn:
        return await repo.expiry_days(conn)


async def set_expiry_days(deps: Deps, days: int) -> int:
    await change_access_settings(deps, expiry_days=days)
    return days


async def get_reminder_days(deps: Deps) -> int:
    async with connection(deps.db) as conn:
        return await repo.reminder_days(conn)


async def set_reminder_days(deps: Deps, days: int) -> int:
    await change_access_settings(deps, reminder_days=days)
    return days


async def change_access_settings(
    deps: Deps, *, expiry_days: int | None = None, reminder_days: int | None = None
) -> None:
    """Invitation Link Expiry and Invitation Reminder (None: unchanged). A save that
    changes something is announced as invitation.settings.changed, with who did it."""
    if expiry_days is not None:
        domain.check_expiry_days(expiry_days)
    if reminder_days is not None:
        domain.check_reminder_days(reminder_days)
    async with transaction(deps.db) as conn:
        before = {
            "invitation_expiry_days": await repo.expiry_days(conn, for_update=True),
            "invitation_reminder_days": await repo.reminder_days(conn),
        }
        wanted = {"invitation_expiry_days": expiry_days, "invitation_reminder_days": reminder_days}
        changes: dict[str, int | bool | str | None] = {
            k: v for k, v in wanted.items() if v is not None and v != before[k]
        }
        if not changes:
            return
        if expiry_days is not None:
            await repo.set_expiry_days(conn, expiry_days)
        if reminder_days is not None:
            await repo.set_reminder_days(conn, reminder_days)
        previous: dict[str, int | bool | str | None] = {k: before[k] for k in changes}
        await emit(
            conn, "invitation.settings.changed", SettingsChanged(changes=changes, previous=previous)
        )
    log.info("invitation_settings_changed", changed=sorted(changes))
