"""Use cases: one async function per command or event. Every change writes its events
through the outbox in the same transaction."""

from .base import SOURCE, CheckedInvite, Deps, GroupCommand, InviteCommand, Outcome
from .erasure import erase_person
from .groups import Group, check_group, invite_group, record_group, replay
from .links import accept, release, reserve, validate
from .new_link import NewLinkWorker, request_new_link, serve_new_link_requests
from .queries import (
    change_access_settings,
    get,
    get_expiry_days,
    get_reminder_days,
    list_page,
    set_expiry_days,
    set_reminder_days,
    status_counts,
)
from .reminders import remind_once
from .sending import (
    check_invite,
    first_write,
    invite,
    log_created,
    prepare_first,
    record_invite,
    record_not_first,
    resend,
    resolve_portal,
    revoke,
)
from .staff import invite_staff, open_staff_invitations
from .staff_sender import revoke_sent_by
from .sweep import SWEEP_LOCK, clear_closed_once, sweep_once

__all__ = [
    "SOURCE",
    "SWEEP_LOCK",
    "CheckedInvite",
    "Deps",
    "Group",
    "GroupCommand",
    "InviteCommand",
    "NewLinkWorker",
    "Outcome",
    "accept",
    "change_access_settings",
    "check_group",
    "check_invite",
    "clear_closed_once",
    "erase_person",
    "first_write",
    "get",
    "get_expiry_days",
    "get_reminder_days",
    "invite",
    "invite_group",
    "invite_staff",
    "list_page",
    "log_created",
    "open_staff_invitations",
    "prepare_first",
    "record_group",
    "record_invite",
    "record_not_first",
    "release",
    "remind_once",
    "replay",
    "request_new_link",
    "resend",
    "reserve",
    "resolve_portal",
    "revoke",
    "revoke_sent_by",
    "serve_new_link_requests",
    "set_expiry_days",
    "set_reminder_days",
    "status_counts",
    "sweep_once",
    "validate",
]
