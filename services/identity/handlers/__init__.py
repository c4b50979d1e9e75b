"""Identity use cases, one function per command. Events go to the outbox in the same
transaction as the change they announce."""

from .activity import activity_actors, list_activity, record_activities, record_activity
from .base import Deps, utcnow
from .keys import create_api_key, list_api_keys, revoke_api_key, verify_api_key
from .resets import RESETS_PER_HOUR, confirm_reset, request_password_reset, validate_reset
from .retention import prune_ended
from .sessions import (
    CurrentSession,
    IssuedSession,
    current_session,
    get_login_redirect,
    issue_session,
    login,
    logout,
    set_login_redirect,
)
from .users import (
    bootstrap_admin,
    change_password,
    create_user,
    disable_user,
    enable_user,
    ensure_user,
    erase_user,
    get_user,
    get_users,
    list_users,
    lookup_user,
    lookup_users,
    set_preferences,
    set_role,
)

__all__ = [
    "RESETS_PER_HOUR",
    "CurrentSession",
    "Deps",
    "IssuedSession",
    "activity_actors",
    "bootstrap_admin",
    "change_password",
    "confirm_reset",
    "create_api_key",
    "create_user",
    "current_session",
    "disable_user",
    "enable_user",
    "ensure_user",
    "erase_user",
    "get_login_redirect",
    "get_user",
    "get_users",
    "issue_session",
    "list_activity",
    "list_api_keys",
    "list_users",
    "login",
    "logout",
    "lookup_user",
    "lookup_users",
    "prune_ended",
    "record_activities",
    "record_activity",
    "request_password_reset",
    "revoke_api_key",
    "set_login_redirect",
    "set_preferences",
    "set_role",
    "utcnow",
    "validate_reset",
    "verify_api_key",
]
