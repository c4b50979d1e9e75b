"""Gateway use cases that span services: where to land after login, and the accept saga
(docs/internal-api.md "The accept saga (gateway)")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from libs.common.errors import Conflict, DomainError
from libs.common.events import ROLE_RANK
from libs.common.logging import get_logger

from ..answers import AcceptedLink, LinkedInvitation, UserAnswer, ValidatedLink
from ..domain import safe_next_path
from ..i18n import N_
from ..upstream import Upstream

log = get_logger(__name__)

ADMIN_HOME = "/admin/portals"


class AccountExists(Conflict):
    code = "account_exists"


# Accepting a staff invitation never lowers a role (ROLE_RANK: an Administrator invited
# as Staff stays an Administrator, and the page says so).
ROLE_NAMES = {
    "administrator": N_("Administrator"),
    "staff": N_("Staff"),
    "client": N_("Client"),
}


@dataclass(frozen=True)
class Accepted:
    token: str  # the new session's token, for the cookie only
    # Where the person lands: their portal, the list of their portals (several at once), or
    # the admin area for a staff invitation.
    destination: str


@dataclass(frozen=True)
class Joined:
    """An account that accepted after logging in: where it lands, and for a staff
    invitation, the role it has now and whether that was its own already (higher)."""

    destination: str
    role: str | None = None
    kept: bool = False
    # The account's role went up: the session that asked must be replaced by a new one.
    raised: bool = False


def is_team(user: UserAnswer | None) -> bool:
    """Administrators and Staff: the people who work in the admin area."""
    return user is not None and user["role"] in ("administrator", "staff")


async def login_destination(up: Upstream, user: UserAnswer, next_raw: str | None) -> str:
    """Administrators and Staff always land in the admin area (on the admin page they
    asked for, if any); with Login Redirect on, a client goes straight to their portal;
    otherwise back to the page they came from, or home."""
    wanted = safe_next_path(next_raw)
    if is_team(user):
        return wanted if wanted and wanted.startswith("/admin/") else ADMIN_HOME
    settings = await up.identity.login_settings()
    if settings.get("login_redirect"):
        return "/client-portal/"
    return wanted or "/"


async def accept_with_password(
    up: Upstream, token: str, password: str, invitation: ValidatedLink | None = None
) -> Accepted:
    """The saga for a person without an account (docs/internal-api.md). The link is spent
    (reserved for this request) before anything is made, so a revoke or the expiry that
    wins leaves no account and no access; a retry of the same link finishes the job.
    ``invitation``: step 1's answer when the caller has just asked for it. A group's link
    (several portals, one invitation) is accepted once for each of its portals still
    Active."""
    if invitation is None:
        invitation = await up.invitations.validate(token)
    if invitation.get("account_exists"):
        raise AccountExists(N_("You already have an account — log in to accept."))
    staff_role = invitation.get("role")
    claim = await up.invitations.reserve(token)
    async with _holding(up, token, claim):
        try:
            # Under the group's id for a group's link: every try of it finds one account.
            ensured = await up.identity.ensure_user(
                invitation["email"],
                password,
                invitation.get("group_id") or invitation["invitation_id"],
                staff_role,
                invitation.get("locale"),
            )
        except DomainError as exc:
            if exc.code == "account_exists":
                raise AccountExists(N_("You already have an account — log in to accept.")) from None
            raise
        user_id = ensured["user"]["id"]
        accepted = await up.invitations.accept(token, claim, user_id)
        taken = _taken(invitation, accepted)
    # Only the holder of the claim gets here. An account it created already has its
    # password; one an earlier try made gets this one now, which ends its other sessions.
    if not ensured.get("created"):
        await up.identity.set_password(user_id, password)
    if not staff_role:  # a staff invitation's account was made with its role
        await _grant(up, taken, user_id, accepted.get("accepted_at"))
    session = await up.identity.issue_session(user_id)
    log.info("invitation_accepted_new_account", invitation_id=invitation["invitation_id"])
    destination = ADMIN_HOME if staff_role else landing(taken)
    return Accepted(token=session["token"], destination=destination)


async def accept_for_user(
    up: Upstream, token: str, invitation: ValidatedLink, user_id: str
) -> Joined:
    """The saga for someone already logged in as the invited email. A staff invitation
    raises the account to its role (never lowers it) before the acceptance is recorded,
    so invitation.staff.accepted always means the account has at least that role."""
    staff_role = invitation.get("role")
    joined: Joined | None = None
    claim = await up.invitations.reserve(token)
    async with _holding(up, token, claim):
        if staff_role:
            joined = await _raise_role(up, user_id, staff_role)
        accepted = await up.invitations.accept(token, claim, user_id)
        taken = _taken(invitation, accepted)
    log.info("invitation_accepted_existing_account", invitation_id=invitation["invitation_id"])
    if joined is not None:
        return joined
    await _grant(up, taken, user_id, accepted.get("accepted_at"))
    return Joined(destination=landing(taken))


async def _raise_role(up: Upstream, user_id: str, invited: str) -> Joined:
    """The account's role becomes the invited one, unless its own is higher already."""
    current = str((await up.identity.get_user(user_id))["role"])
    if ROLE_RANK.get(current, 0) >= ROLE_RANK[invited]:
        return Joined(destination=ADMIN_HOME, role=current, kept=current != invited)
    await up.identity.set_role(user_id, invited)
    return Joined(destination=ADMIN_HOME, role=invited, raised=True)


def _taken(invitation: ValidatedLink, accepted: AcceptedLink) -> list[LinkedInvitation]:
    """What the acceptance took: each invitation of a group's link the claim held, or the
    one the link was for."""
    listed = accepted.get("invitations")
    if listed:
        return list(listed)
    return [
        {
            "invitation_id": invitation["invitation_id"],
            "portal_id": invitation["portal_id"],
            "portal_title": invitation.get("portal_title"),
            "portal_slug": invitation["portal_slug"],
            "sub_client": invitation.get("sub_client"),
            "idempotency_key": invitation.get("idempotency_key"),
            "locale": invitation.get("locale"),
        }
    ]


def landing(taken: list[LinkedInvitation]) -> str:
    """One portal: straight to it; several: the list of the person's portals."""
    if len(taken) == 1:
        return f"/client-portal/{taken[0]['portal_slug']}/"
    return "/client-portal/"


@asynccontextmanager
async def _holding(up: Upstream, token: str, claim: str) -> AsyncIterator[None]:
    """Between reserve and accept: on a failure, let go of the claim so the same link can
    finish the job at once (else after the lease). A refusal (4xx) made nothing, so the
    invitation goes back to pending; after anything else the account may exist, so the
    link stays spent for its holder."""
    try:
        yield
    except Exception as exc:
        reopen = isinstance(exc, DomainError) and exc.status < 500
        try:
            await up.invitations.release(token, claim, reopen=reopen)
        except DomainError:
            log.warning("invitation_release_failed", reopen=reopen)
        raise


async def _grant(
    up: Upstream, taken: list[LinkedInvitation], user_id: str, accepted_at: str | None
) -> None:
    """After the acceptance: portals also grants from each ``invitation.accepted`` under
    the same key, so a failure here delays access but can't lose it. ``accepted_at`` (when
    invitations recorded the acceptance, one time for a group's link) goes with each grant,
    as the event's time goes with portals' own: an acceptance made before a Disable and the
    Enable after it (this step slow or retried meanwhile) gives no portal back."""
    for invitation in taken:
        portal_id = invitation["portal_id"]
        if portal_id is None:  # a staff invitation: a role, no portal
            continue
        role = "sub_client" if invitation.get("sub_client") else None
        await up.portals.grant(
            portal_id,
            user_id,
            role,
            invitation["invitation_id"],
            invitation.get("idempotency_key"),
            accepted_at,
        )
