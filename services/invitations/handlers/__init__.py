"""Use cases: one async function per command or event. Every change writes its events
through the outbox in the same transaction."""

from .base import SOURCE, CheckedInvite, Deps, InviteCommand, Outcome
from .links import accept, validate
from .queries import get, get_expiry_days, list_page, set_expiry_days
from .sending import check_invite, invite, record_invite, resend, resolve_portal, revoke
from .sweep import SWEEP_LOCK, sweep_once

__all__ = [
    "SOURCE",
    "SWEEP_LOCK",
    "CheckedInvite",
    "Deps",
    "InviteCommand",
    "Outcome",
    "accept",
    "check_invite",
    "get",
    "get_expiry_days",
    "invite",
    "list_page",
    "record_invite",
    "resend",
    "resolve_portal",
    "revoke",
    "set_expiry_days",
    "sweep_once",
    "validate",
]
