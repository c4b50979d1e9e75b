"""Identity use cases, one function per command. Events go to the outbox in the same
transaction as the change they announce."""

from .base import Deps, utcnow
from .resets import RESETS_PER_HOUR, confirm_reset, request_password_reset, validate_reset
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
    ensure_user,
    get_user,
    list_users,
    lookup_user,
)

__all__ = [
    "RESETS_PER_HOUR",
    "CurrentSession",
    "Deps",
    "IssuedSession",
    "bootstrap_admin",
    "change_password",
    "confirm_reset",
    "create_user",
    "current_session",
    "disable_user",
    "ensure_user",
    "get_login_redirect",
    "get_user",
    "issue_session",
    "list_users",
    "login",
    "logout",
    "lookup_user",
    "request_password_reset",
    "set_login_redirect",
    "utcnow",
    "validate_reset",
]
