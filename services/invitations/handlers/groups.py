"""Several portals, one invitation: one person invited to several portals at once gets
one email with one link. Each portal keeps its own invitation (its Invitations screen,
Resend / Revoke, ``invitation.created`` and ``invitation.accepted``); the invitations
share a group and, while they are sent together, their link. Accepting it accepts each
one still pending whose portal is still Active (links.py); revoking one leaves the
others on the same link; a Resend of one sends the group's link again (sending.py)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Literal, NoReturn

import asyncpg

from libs.common.db import transaction
from libs.common.email import email_key, normalise_email
from libs.common.errors import Conflict, NotFound
from libs.common.i18n import check_locale

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from .base import CheckedGroup, Deps, GroupCommand, Row, log
from .sending import _refresh_portal, key_reused, prepare_first, resolve_portal, write_first_sends


@dataclass(frozen=True)
class Group:
    group_id: uuid.UUID
    invitations: list[Row]  # one per portal, in the order the portals were asked for
    outcome: Literal["created", "duplicate"]


async def invite_group(deps: Deps, command: GroupCommand) -> Group:
    """The invitations and their one email, or what this idempotency key already made."""
    if command.idempotency_key is not None:
        done = await replay(deps, command)
        if done is not None:
            return done
    # Checked on the pool: no connection is held across the calls to identity and portals.
    checked = await check_group(deps, command)
    return await record_group(deps, checked)


async def replay(deps: Deps, command: GroupCommand) -> Group | None:
    """What the key made, if it made something: the same request answers as the first
    time; the key with another email or other portals is refused."""
    key = command.idempotency_key
    if key is None:
        return None
    found = await repo.find_group_by_key(deps.db, key)
    if found is None:
        if await repo.single_key_taken(deps.db, key):
            raise key_reused()
        return None
    email_lower = email_key(normalise_email(command.email))
    if found["email_lower"] != email_lower or set(found["portal_ids"]) != set(command.portal_ids):
        raise key_reused()
    return Group(found["id"], await repo.group_members(deps.db, found["id"]), "duplicate")


async def check_group(deps: Deps, command: GroupCommand) -> CheckedGroup:
    """Every rule that needs the replica or another service; nothing is written. Each
    refusal names the portal it is about."""
    email = normalise_email(command.email)
    domain.check_portal_ids(command.portal_ids)
    if command.expires_in_days is not None:
        domain.check_link_expiry(command.expires_in_days)
    domain.check_inviter(command.invited_by)
    message = domain.clean_personal_message(command.personal_message)
    name = domain.clean_name(command.invitee_name)
    locale = check_locale(command.locale)
    if isinstance(deps.db, asyncpg.Pool):
        portals = list(await asyncio.gather(*(_portal(deps, p) for p in command.portal_ids)))
    else:  # one connection (a consumer's transaction) runs one query at a time
        portals = [await _portal(deps, p) for p in command.portal_ids]
    idle = [p for p in portals if p.status != "active"]
    if idle:
        it = "it" if len(idle) == 1 else "them"
        _refuse(
            idle,
            "portal_not_active",
            f"{_is(idle)}: only Active portals take invitations. Leave {it} out, or make"
            f" {it} Active first.",
        )
    user_id = await deps.directory.find_user_id(email)
    if user_id is not None:
        theirs = await deps.directory.user_portal_ids(user_id)
        already = [p for p in portals if p.portal_id in theirs]
        if already:
            _refuse(
                already,
                "already_has_access",
                f"This person already has access to {_names(already)}; no invitation is"
                " needed there. Leave it out.",
            )
    return CheckedGroup(
        command, email, portals, message, name, locale, has_account=user_id is not None
    )


def _is(portals: list[PortalInfo]) -> str:
    """ "The portal 'Acme' is Archived", "The portals 'Acme' (Pending) and 'Beta'
    (Archived) are not Active"."""
    if len(portals) == 1:
        return f"The portal '{portals[0].title}' is {portals[0].status.capitalize()}"
    return f"The portals {_names(portals)} are not Active"


def _names(portals: list[PortalInfo]) -> str:
    return domain.portal_names([p.title for p in portals])


async def _portal(deps: Deps, portal_id: uuid.UUID) -> PortalInfo:
    try:
        portal = await resolve_portal(deps, portal_id, None)
    except NotFound:
        raise NotFound(
            f"There is no portal {portal_id}.",
            code="portal_not_found",
            details={"portal_id": str(portal_id)},
        ) from None
    if portal.status != "active":
        portal = await _refresh_portal(deps, portal)
    return portal


async def record_group(deps: Deps, checked: CheckedGroup) -> Group:
    """The group, its invitations (one per portal, each with the group's one link) and
    one mail job, in one transaction (in a caller's, a savepoint)."""
    async with transaction(deps.db) as conn:
        command = checked.command
        key = command.idempotency_key
        email_lower = email_key(checked.email)
        portal_ids = [p.portal_id for p in checked.portals]
        group_id = uuid.uuid4()
        if not await repo.insert_group(conn, group_id, email_lower, portal_ids, key):
            # The same key, committed by a concurrent request a moment ago.
            done = await replay(deps.within(conn), command)
            assert done is not None
            return done
        if key is not None and await repo.single_key_taken(conn, key):
            raise key_reused()
        pending = await repo.pending_portal_ids(conn, email_lower, portal_ids, besides=[])
        if pending:
            _refuse_pending([p for p in checked.portals if p.portal_id in pending])
        now = deps.clock()
        days = command.expires_in_days or await repo.expiry_days(conn)
        first = prepare_first(deps, checked, now, days, group_id)
        made: list[Row] = []
        for portal, new in zip(checked.portals, first.rows, strict=True):
            row = await repo.insert(conn, **vars(new))
            if row is None:
                # An invitation to this portal went pending between our look and our insert.
                _refuse_pending([portal])
            made.append(row)
        await write_first_sends(conn, [first])
        log.info("invitation_group_created", group_id=str(group_id), portals=len(made))
        return Group(group_id, made, "created")


def _refuse_pending(portals: list[PortalInfo]) -> NoReturn:
    _refuse(
        portals,
        "invitation_pending",
        f"This person already has a pending invitation to {_names(portals)}. Resend it"
        " from Invitations, or leave that portal out.",
    )


def _refuse(portals: list[PortalInfo], code: str, message: str) -> NoReturn:
    """A refusal about some of the portals asked for: ``details`` lists them."""
    raise Conflict(message, code=code, details={"portal_ids": [str(p.portal_id) for p in portals]})
