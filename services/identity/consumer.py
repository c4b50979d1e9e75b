"""Events that record the Activity log, translated into entries at the edge: every change
a staff member or a key made (the envelope's ``actor``), whichever service announced it.
The handler gets ``Deps`` on the inbox transaction's connection (libs/common/bus.py
``in_inbox``), so the entries commit with their inbox rows; the events that arrive
together are recorded in one statement (``Together``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libs.common.activity import EVENT_ACTIONS
from libs.common.broker import CONSUMES
from libs.common.bus import Together
from libs.common.events import (
    ApiKeyChanged,
    BrandingChanged,
    Envelope,
    Event,
    EventData,
    InvitationClosed,
    InvitationCreated,
    InvitationResent,
    PortalAccessChanged,
    PortalChanged,
    SettingsChanged,
    StaffInvitationClosed,
    StaffInvitationSent,
    UserDisabled,
    UserEnabled,
    UserErased,
    UserRoleChanged,
)

from . import handlers
from .domain import ActivityEntry
from .handlers import Deps

BINDINGS = CONSUMES["identity"]
SETTINGS_LABEL = "Access & Login"
BRANDING_LABEL = "Branding"


def _object(data: EventData) -> tuple[str, str | None, str, Any, dict[str, Any]]:
    """(object type, object id, label, portal id, details) of the change ``data`` announces."""
    match data:
        case InvitationCreated() | InvitationResent() | InvitationClosed():
            details = {"invited_by": data.invited_by} if data.invited_by else {}
            return "invitation", str(data.invitation_id), data.email, data.portal_id, details
        case StaffInvitationSent() | StaffInvitationClosed():
            staff: dict[str, Any] = {"role": data.role}
            if isinstance(data, StaffInvitationSent) and data.invited_by:
                staff["invited_by"] = data.invited_by
            return "staff_invitation", str(data.invitation_id), data.email, None, staff
        case PortalChanged():
            details = {"status": data.status}
            return "portal", str(data.portal_id), data.title, data.portal_id, details
        case PortalAccessChanged():
            details = {"role": data.role} if data.role else {}
            return "user", str(data.user_id), "", data.portal_id, details
        case UserRoleChanged():
            details = {"role": data.role, "previous_role": data.previous_role}
            return "user", str(data.user_id), "", None, details
        case UserDisabled() | UserEnabled() | UserErased():
            return "user", str(data.user_id), "", None, {}
        case ApiKeyChanged():
            return "key", str(data.key_id), data.name, None, {"scopes": data.scopes}
        case BrandingChanged():
            return "settings", None, BRANDING_LABEL, None, {"changed": list(data.changed)}
        case SettingsChanged():
            changed: dict[str, Any] = {"changes": data.changes, "previous": data.previous}
            return "settings", None, SETTINGS_LABEL, None, changed
    raise TypeError(f"no Activity object for {type(data).__name__}")


def entry_of(envelope: Envelope, data: EventData) -> ActivityEntry | None:
    """The entry this event records, or None: a change nobody asked for (expiry, the
    invitee's own acceptance, another system's invitation.requested) carries no actor."""
    action = EVENT_ACTIONS.get(envelope.type)
    actor = envelope.actor
    if action is None or actor is None:
        return None
    object_type, object_id, label, portal_id, details = _object(data)
    return ActivityEntry(
        id=envelope.id,
        occurred_at=envelope.occurred_at,
        action=action,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        object_type=object_type,
        object_id=object_id,
        object_label=label,
        portal_id=portal_id,
        details=details,
    )


async def on_changes(deps: Deps, events: Sequence[Event]) -> None:
    """The entries of the events that arrived together, in one statement."""
    entries = [entry for envelope, data in events if (entry := entry_of(envelope, data))]
    if entries:
        await handlers.record_activities(deps, entries)


def has_actor(envelope: Envelope) -> bool:
    """A change somebody made: the others (an expiry, another system's invitation) record
    nothing, and are acknowledged without a transaction."""
    return envelope.actor is not None


# One Together for every type: a run of changes of any kinds is recorded in one statement.
HANDLERS: dict[str, Together[Deps]] = dict.fromkeys(
    EVENT_ACTIONS, Together(on_changes, wants=has_actor)
)
