"""The Activity log's vocabulary: which events record which action, and the action's
words on the Activity screen (docs/design.md "Activity"). Identity records the log from
these events; the gateway shows it and takes the action names as a filter."""

from __future__ import annotations

# Action name (the API's ``action`` filter) -> the words on the Activity screen.
ACTIONS: dict[str, str] = {
    "invitation.sent": "Invitation sent",
    "invitation.resent": "Invitation resent",
    "invitation.revoked": "Invitation revoked",
    "portal.created": "Portal created",
    "portal.updated": "Portal updated",
    "portal.access_granted": "Access granted",
    "portal.access_removed": "Access removed",
    "settings.changed": "Settings changed",
    "user.invited": "User invited",
    "user.invitation_resent": "User invitation resent",
    "user.invitation_revoked": "User invitation revoked",
    "user.role_changed": "Role changed",
    "user.disabled": "User disabled",
    "user.enabled": "User enabled",
    "key.created": "Key created",
    "key.revoked": "Key revoked",
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
    "identity.key.created": "key.created",
    "identity.key.revoked": "key.revoked",
}
