"""Events from other services, translated into portal commands at the edge. Each handler
gets ``Deps`` on the inbox transaction's connection (libs/common/bus.py ``in_inbox``), so
the use case's change commits with the inbox row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.common.broker import CONSUMES
from libs.common.errors import InvalidInput, NotFound
from libs.common.events import (
    Envelope,
    EventData,
    InvitationAccepted,
    UserDisabled,
    UserEnabled,
    UserErased,
)
from libs.common.logging import get_logger

from . import handlers
from .domain import role_for_invitation
from .handlers import Deps

log = get_logger(__name__)

BINDINGS = CONSUMES["portals"]


async def on_invitation_accepted(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """Grant under the invitation id: harmless when the accept saga already granted."""
    assert isinstance(data, InvitationAccepted)
    try:
        await handlers.grant_access(
            deps,
            data.portal_id,
            data.user_id,
            role_for_invitation(data.sub_client),
            str(data.invitation_id),
            data.idempotency_key,
            accepted_at=envelope.occurred_at,
        )
    except NotFound:
        # Retrying can't make the portal appear; record the event and move on.
        log.warning("invitation_portal_missing", portal_id=str(data.portal_id))
    except InvalidInput as exc:
        if exc.code != "user_disabled":
            raise
        # Heard after the account's Disable (two services, two outboxes: no order between
        # them): the Disable took the person off every portal, and an Enable gives none
        # back. Record the event; nothing to retry.
        log.warning("invitation_account_closed", user_id=str(data.user_id))


async def on_user_disabled(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """A disabled or an erased account leaves every portal (an erased one for good)."""
    assert isinstance(data, UserDisabled | UserErased)
    erased = isinstance(data, UserErased)
    await handlers.remove_user(deps, data.user_id, envelope.occurred_at, erased=erased)


async def on_user_enabled(deps: Deps, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, UserEnabled)
    await handlers.note_enabled(deps, data.user_id, envelope.occurred_at)


HANDLERS: dict[str, Callable[[Deps, Envelope, EventData], Awaitable[None]]] = {
    "invitation.accepted": on_invitation_accepted,
    "identity.user.disabled": on_user_disabled,
    "identity.user.enabled": on_user_enabled,
    "identity.user.erased": on_user_disabled,
}
