"""Gateway use cases that span services: where to land after login, and the accept saga
(docs/internal-api.md "The accept saga (gateway)")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.common.errors import Conflict, DomainError
from libs.common.logging import get_logger

from .domain import safe_next_path
from .upstream import Json, Upstream

log = get_logger(__name__)

ADMIN_HOME = "/admin/portals"


class AccountExists(Conflict):
    code = "account_exists"


@dataclass(frozen=True)
class Accepted:
    token: str  # the new session's token, for the cookie only
    slug: str


def is_admin(user: dict[str, Any] | None) -> bool:
    return user is not None and user.get("role") == "administrator"


def same_email(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


async def login_destination(up: Upstream, user: Json, next_raw: str | None) -> str:
    """Administrators always land in the admin area (on the admin page they asked for, if
    any); with Login Redirect on, a client goes straight to their portal; otherwise back to
    the page they came from, or home."""
    wanted = safe_next_path(next_raw)
    if is_admin(user):
        return wanted if wanted and wanted.startswith("/admin/") else ADMIN_HOME
    settings = await up.identity.login_settings()
    if settings.get("login_redirect"):
        return "/client-portal/"
    return wanted or "/"


async def accept_with_password(
    up: Upstream, token: str, password: str, invitation: Json | None = None
) -> Accepted:
    """Steps 1-5 for a person without an account. Every step is idempotent under the
    invitation id, so a retry of the same link after a failure finishes the job.
    ``invitation``: step 1's answer when the caller has just asked for it."""
    if invitation is None:
        invitation = await up.invitations.validate(token)
    if invitation.get("account_exists"):
        raise AccountExists("You already have an account — log in to accept.")
    try:
        ensured = await up.identity.ensure_user(
            invitation["email"], password, invitation["invitation_id"]
        )
    except DomainError as exc:
        if exc.code == "account_exists":
            raise AccountExists("You already have an account — log in to accept.") from None
        raise
    user_id = ensured["user"]["id"]
    await grant_and_accept(up, token, invitation, user_id)
    # Only the winner of step 4 gets here. An account it created already has its password;
    # one found from an earlier try (or made by a concurrent loser) gets this one now.
    if not ensured.get("created"):
        await up.identity.set_password(user_id, password)
    session = await up.identity.issue_session(user_id)
    log.info("invitation_accepted_new_account", invitation_id=invitation["invitation_id"])
    return Accepted(token=session["token"], slug=invitation["portal_slug"])


async def accept_for_user(up: Upstream, token: str, invitation: Json, user_id: str) -> str:
    """Steps 3-4 for someone already logged in as the invited email; returns the slug."""
    await grant_and_accept(up, token, invitation, user_id)
    log.info("invitation_accepted_existing_account", invitation_id=invitation["invitation_id"])
    slug: str = invitation["portal_slug"]
    return slug


async def grant_and_accept(up: Upstream, token: str, invitation: Json, user_id: str) -> None:
    role = "sub_client" if invitation.get("sub_client") else None
    await up.portals.grant(invitation["portal_id"], user_id, role, invitation["invitation_id"])
    await up.invitations.accept(token, user_id)
