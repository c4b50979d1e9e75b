"""Many invitations to one portal in one request (Import Clients, the batch API): the
rules are checked for the whole batch at once (one portal, one account look-up), rows
are written many per transaction, and a row that fails falls back to its own
transaction so it never fails its neighbours. A row's key makes a retry answer as the
first request did and send nothing twice."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import asyncpg

from libs.common.db import Conn, connection, transaction
from libs.common.email import email_key, normalise_email
from libs.common.errors import DomainError, Unavailable
from libs.common.i18n import check_locale

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from .base import CheckedInvite, Deps, InviteCommand, log
from .key_cap import key_allowance
from .sending import FirstSend, prepare_first, record_invite, resolve_portal, write_first_sends

# Rows per transaction: large enough that a commit's fsync and each statement are shared
# by many rows, small enough that a fallback to one by one redoes little and locks are
# held briefly.
CHUNK = 500
MAX_ROWS = 1000

Status = Literal["created", "resent", "rejected"]


@dataclass(frozen=True)
class BatchRow:
    row: int
    email: str
    name: str | None = None
    personal_message: str | None = None
    sub_client: bool | None = None
    key: str | None = None


@dataclass(frozen=True)
class RowResult:
    row: int
    email: str
    status: Status
    invitation_id: uuid.UUID | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class _Ready:
    """A row that passed every rule: it will be created or resent."""

    row: BatchRow
    checked: CheckedInvite
    email_lower: str


class _KeyTaken(Exception):
    """A concurrent request recorded this row's key first: redo the row alone."""


def _rejected(row: BatchRow, error: DomainError) -> RowResult:
    return RowResult(row.row, row.email, "rejected", reason=error.code, message=error.message)


async def invite_batch(
    deps: Deps,
    portal_id: uuid.UUID,
    rows: Sequence[BatchRow],
    *,
    invited_by: str | None,
    dry_run: bool = False,
    locale: str | None = None,
) -> list[RowResult]:
    """One result per row, in input order. The portal must take invitations (else the
    whole batch is refused); everything else is a verdict on its row. ``dry_run``: the
    verdicts a send would give now, nothing written (the Import Clients preview)."""
    locale = check_locale(locale)  # the whole batch's language
    invited_by = domain.check_inviter(invited_by)
    portal = await _active_portal(deps, portal_id)
    results: dict[int, RowResult] = {}
    ready: list[_Ready] = []
    replays = await _replays(deps, rows)
    seen: dict[str, int] = {}
    for row in rows:
        try:
            email = normalise_email(row.email)
            message = domain.clean_personal_message(row.personal_message)
            name = domain.clean_name(row.name)
        except DomainError as error:
            results[row.row] = _rejected(row, error)
            continue
        email_lower = email_key(email)
        if row.key is not None and row.key in replays:
            results[row.row] = _replayed(row, replays[row.key], portal.portal_id, email_lower)
            continue
        if email_lower in seen:
            results[row.row] = RowResult(
                row.row,
                row.email,
                "rejected",
                reason="duplicate",
                message=f"This email is already on row {seen[email_lower]}.",
            )
            continue
        seen[email_lower] = row.row
        command = InviteCommand(
            email=email,
            portal_id=portal.portal_id,
            invited_by=invited_by,
            sub_client=row.sub_client,
            personal_message=message,
            invitee_name=name,
            locale=locale,
        )
        checked = CheckedInvite(
            command=command, email=email, portal=portal, personal_message=message, locale=locale
        )
        ready.append(_Ready(row, checked, email_lower))
    ready = await _without_access(deps, portal, ready, results)
    if dry_run:
        pending = await repo.pending_emails(
            deps.db, portal.portal_id, [r.email_lower for r in ready]
        )
        for item in ready:
            status: Status = "resent" if item.email_lower in pending else "created"
            results[item.row.row] = RowResult(item.row.row, item.row.email, status)
    else:
        ready = await _within_key_cap(deps, ready, results)
        async with connection(deps.db) as conn:
            days = await repo.expiry_days(conn)
        for start in range(0, len(ready), CHUNK):
            for result in await _write(deps, ready[start : start + CHUNK], days):
                results[result.row] = result
    log.info(
        "invitation_batch",
        portal_id=str(portal.portal_id),
        rows=len(rows),
        sent=sum(r.status != "rejected" for r in results.values()),
        dry_run=dry_run,
    )
    return [results[row.row] for row in rows]


async def _within_key_cap(
    deps: Deps, ready: list[_Ready], results: dict[int, RowResult]
) -> list[_Ready]:
    """The rows the request's API key may still send this hour (all of them for a person);
    the rest are answered integration_rate_limited. The granted rows are counted before
    they are written, so a batch's pieces under way together see each other sooner (a row
    that then fails is counted too; a replayed row never reaches here)."""
    allowance = await key_allowance(deps)
    granted = allowance.granted(len(ready))
    if granted < len(ready):
        refusal = await allowance.refusal()
        for item in ready[granted:]:
            results[item.row.row] = _rejected(item.row, refusal)
    await allowance.spend(granted)
    return ready[:granted]


async def _active_portal(deps: Deps, portal_id: uuid.UUID) -> PortalInfo:
    portal = await resolve_portal(deps, portal_id, None)
    if portal.status != "active":
        fresh = await deps.directory.fetch_portal(portal.portal_id)
        if fresh is not None and fresh.revision > portal.revision:
            await repo.upsert_portal(deps.db, fresh)
            portal = fresh
    domain.check_portal_accepts(portal.status)
    return portal


async def _replays(deps: Deps, rows: Sequence[BatchRow]) -> dict[str, asyncpg.Record]:
    keys = [row.key for row in rows if row.key is not None]
    if not keys:
        return {}
    return {found["key"]: found for found in await repo.find_batch_keys(deps.db, keys)}


def _replayed(
    row: BatchRow, done: asyncpg.Record, portal_id: uuid.UUID, email_lower: str
) -> RowResult:
    if done["portal_id"] != portal_id or done["email_lower"] != email_lower:
        return RowResult(
            row.row,
            row.email,
            "rejected",
            reason="idempotency_key_reused",
            message="This key was already used for another invitation.",
        )
    return RowResult(row.row, row.email, done["outcome"], invitation_id=done["invitation_id"])


async def _without_access(
    deps: Deps, portal: PortalInfo, ready: list[_Ready], results: dict[int, RowResult]
) -> list[_Ready]:
    """Rows whose person already has access to the portal are answered here: one look-up
    of the portal's people and one of the batch's addresses, not two calls per row. The
    others learn whether they have an account, for the words of their email."""
    if not ready:
        return ready
    members = await deps.directory.portal_member_ids(portal.portal_id)
    accounts = await deps.directory.find_user_ids([item.checked.email for item in ready])
    kept = []
    for item in ready:
        account = accounts.get(item.email_lower)
        if account is None:
            kept.append(item)
        elif account in members:
            results[item.row.row] = RowResult(
                item.row.row,
                item.row.email,
                "rejected",
                reason="already_has_access",
                message="This person already has access to the portal; no invitation is needed.",
            )
        else:
            kept.append(replace(item, checked=replace(item.checked, has_account=True)))
    return kept


async def _write(deps: Deps, chunk: list[_Ready], days: int) -> list[RowResult]:
    """The chunk in one transaction; if any row fails, each row in its own."""
    try:
        async with transaction(deps.db) as conn:
            return await _record_chunk(conn, deps, chunk, days)
    except Unavailable:
        raise
    except (
        DomainError,
        _KeyTaken,
        _Taken,
        asyncpg.IntegrityConstraintViolationError,
        # Two batches locking the same people in another order: one row at a time can't.
        asyncpg.TransactionRollbackError,
    ):
        if len(chunk) > 1:
            log.info("invitation_batch_fallback", rows=len(chunk))
    return [await _write_one(deps, item) for item in chunk]


class _Taken(Exception):
    """A concurrent request invited one of the chunk's people first: redo row by row."""


async def _record_chunk(conn: Conn, deps: Deps, chunk: list[_Ready], days: int) -> list[RowResult]:
    """First invitations as a few statements for the whole chunk (rows, links, events,
    keys); a person with a pending invitation is resent on their own, as one call would."""
    portal_id = chunk[0].checked.portal.portal_id
    pending = await repo.pending_emails(conn, portal_id, [item.email_lower for item in chunk])
    results: dict[int, RowResult] = {}
    firsts: list[tuple[_Ready, FirstSend]] = []
    now = deps.clock()
    for item in chunk:
        if item.email_lower in pending:
            results[item.row.row] = await _record(conn, deps, item)
        else:
            chosen = item.checked.command.expires_in_days or days
            firsts.append((item, prepare_first(deps, item.checked, now, chosen)))
    if firsts:
        rows = [row for _, first in firsts for row in first.rows]
        if await repo.insert_many(conn, rows) != len(rows):
            raise _Taken
        await write_first_sends(conn, [first for _, first in firsts])
        # One portal: each row's one invitation.
        made = [(item, first.rows[0].invitation_id) for item, first in firsts]
        keyed = [
            (item.row.key, invitation_id, item.email_lower, "created")
            for item, invitation_id in made
            if item.row.key is not None
        ]
        if keyed and await repo.record_batch_keys(conn, portal_id, keyed) != len(keyed):
            raise _KeyTaken
        for item, invitation_id in made:
            results[item.row.row] = RowResult(
                item.row.row, item.row.email, "created", invitation_id=invitation_id
            )
        log.info("invitations_created", portal_id=str(portal_id), rows=len(firsts))
    return [results[item.row.row] for item in chunk]


async def _write_one(deps: Deps, item: _Ready) -> RowResult:
    row = item.row
    try:
        async with transaction(deps.db) as conn:
            return await _record(conn, deps, item)
    except Unavailable:
        raise
    except DomainError as error:
        return _rejected(row, error)
    except _KeyTaken:
        # The concurrent request that took the key has committed: answer as it did.
        async with connection(deps.db) as conn:
            done = await repo.find_batch_keys(conn, [row.key or ""])
        if not done:
            raise
        return _replayed(row, done[0], item.checked.portal.portal_id, item.email_lower)


async def _record(conn: Conn, deps: Deps, item: _Ready) -> RowResult:
    row = item.row
    # The batch's row transaction holds the invitation and its key together.
    made, outcome = await record_invite(deps.within(conn), item.checked)
    status: Status = "resent" if outcome == "resent" else "created"
    if row.key is not None:
        recorded = await repo.record_batch_key(
            conn, row.key, made["id"], item.checked.portal.portal_id, item.email_lower, status
        )
        if not recorded:
            raise _KeyTaken(row.key)
    return RowResult(row.row, row.email, status, invitation_id=made["id"])
