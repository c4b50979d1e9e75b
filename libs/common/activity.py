"""The Activity log's vocabulary: which events record which action, and the action's
words on the Activity screen (docs/design.md "Activity"). Identity records the log from
these events; the gateway shows it and takes the action names as a filter."""

from __future__ import annotations

from .i18n import N_

# Action name (the API's ``action`` filter) -> the words on the Activity screen (English
# msgids: the screen shows them in the reader's language).
ACTIONS: dict[str, str] = {
    "invitation.sent": N_("Invitation sent"),
    "invitation.resent": N_("Invitation resent"),
    "invitation.revoked": N_("Invitation revoked"),
    "portal.created": N_("Portal created"),
    "portal.updated": N_("Portal updated"),
    "portal.access_granted": N_("Access granted"),
    "portal.access_removed": N_("Access removed"),
    "settings.changed": N_("Settings changed"),
    "user.invited": N_("User invited"),
    "user.invitation_resent": N_("User invitation resent"),
    "user.invitation_revoked": N_("User invitation revoked"),
    "user.role_changed": N_("Role changed"),
    "user.disabled": N_("User disabled"),
    "user.enabled": N_("User enabled"),
    "user.erased": N_("User erased"),
    "key.created": N_("Key created"),
    "key.revoked": N_("Key revoked"),
}

# Event type -> action. An event of these types that carries an actor (a staff member or
# a key) is one entry in the log; without an actor (the system's own work) it is none.
EVENT_ACTIONS: dict[str, str] = {
    "invitation.created": "invitation.sent",
    "invitation.resent": "invitation.resent",
    "invitation.revoked": "invitation.revoked",
    "portal.created": "portal.created",
    "portal.updated": "portal.updated",
    "portal.access.granted": "portal.access_granted",
    "portal.access.revoked": "portal.access_removed",
    "identity.settings.changed": "settings.changed",
    "invitation.settings.changed": "settings.changed",
    "settings.branding.changed": "settings.changed",
    "invitation.staff.created": "user.invited",
    "invitation.staff.resent": "user.invitation_resent",
    "invitation.staff.revoked": "user.invitation_revoked",
    "identity.user.role_changed": "user.role_changed",
    "identity.user.disabled": "user.disabled",
    "identity.user.enabled": "user.enabled",
    "identity.user.erased": "user.erased",
    "identity.key.created": "key.created",
    "identity.key.revoked": "key.revoked",
}
