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
from libs.common.events import InvitationCreated
from libs.common.i18n import check_locale

from .. import domain
from .. import repository as repo
from ..clients import PortalInfo
from . import sends
from .base import Deps, InviteOptions, Row, emit, log
from .sending import GROUP_REF, _mail_job, _refresh_portal, key_reused, resolve_portal


@dataclass(frozen=True)
class GroupCommand(InviteOptions):
    email: str
    portal_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class Group:
    group_id: uuid.UUID
    invitations: list[Row]  # one per portal, in the order the portals were asked for
    outcome: Literal["created", "duplicate"]


@dataclass(frozen=True)
class _Checked:
    command: GroupCommand
    email: str
    portals: list[PortalInfo]
    personal_message: str | None
    invitee_name: str | None
    locale: str | None = None


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


async def check_group(deps: Deps, command: GroupCommand) -> _Checked:
    """Every rule that needs the replica or another service; nothing is written. Each
    refusal names the portal it is about."""
    email = normalise_email(command.email)
    domain.check_portal_ids(command.portal_ids)
    if command.expires_in_days is not None:
        domain.check_link_expiry(command.expires_in_days)
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
    return _Checked(command, email, portals, message, name, locale)


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


async def record_group(deps: Deps, checked: _Checked) -> Group:
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
        expires_at = domain.expiry_for(now, days)
        token, token_hash = domain.new_token()
        mail_id = uuid.uuid4()
        made: list[Row] = []
        for portal in checked.portals:
            row = await repo.insert(
                conn,
                invitation_id=uuid.uuid4(),
                email=checked.email,
                email_lower=email_lower,
                portal_id=portal.portal_id,
                token_hash=token_hash,
                sent_at=now,
                expires_at=expires_at,
                mail_id=mail_id,
                sub_client=command.sub_client,
                invited_by=command.invited_by,
                idempotency_key=None,  # the group's key: each row's events carry it
                expires_in_days=days,
                expiry_chosen=command.expires_in_days is not None,
                personal_message=checked.personal_message,
                invitee_name=checked.invitee_name,
                group_id=group_id,
                locale=checked.locale,
            )
            if row is None:
                # An invitation to this portal went pending between our look and our insert.
                _refuse_pending([portal])
            await repo.record_link(
                conn,
                token_hash=token_hash,
                invitation_id=row["id"],
                email_lower=email_lower,
                issued_at=now,
                expires_at=expires_at,
                reason=sends.FIRST,
            )
            made.append(row)
        mail = _mail_job(
            deps,
            mail_id,
            (GROUP_REF, group_id),
            checked.email,
            token,
            [p.title for p in checked.portals],
            expires_at,
            command.invited_by,
            expires_in_days=days,
            personal_message=checked.personal_message,
            invitee_name=checked.invitee_name,
            locale=checked.locale,
        )
        created = [
            (
                "invitation.created",
                InvitationCreated(
                    invitation_id=row["id"],
                    portal_id=row["portal_id"],
                    email=checked.email,
                    expires_at=expires_at,
                    invited_by=command.invited_by,
                    idempotency_key=key,
                    sub_client=command.sub_client,
                    expires_in_days=days,
                    group_id=group_id,
                    locale=checked.locale,
                ),
            )
            for row in made
        ]
        first_type, first = created[0]
        await emit(conn, first_type, first, *created[1:], ("mail.requested", mail))
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
