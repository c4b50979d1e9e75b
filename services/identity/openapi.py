"""The identity API's OpenAPI 3.1 document, built from the same pydantic models the views
parse with, so the description can't drift from what is accepted."""

from __future__ import annotations

from typing import Any

from libs.common.openapi import TIME, UUID, Operation, openapi_route, page_of

from . import api

USER = {
    "type": "object",
    "required": ["id", "email", "role", "disabled", "created_at", "locale", "time_zone"],
    "properties": {
        "id": UUID,
        "email": {"type": "string"},
        "role": {"type": "string", "enum": ["administrator", "staff", "client"]},
        "disabled": {"type": "boolean"},
        "created_at": TIME,
        "locale": {"type": ["string", "null"], "enum": ["en", "de", "fr", "es", None]},
        "time_zone": {"type": ["string", "null"], "description": "An IANA time zone name"},
    },
}
SESSION = {
    "type": "object",
    "properties": {
        "id": UUID,
        "created_at": TIME,
        "expires_at": TIME,
        "idle_expires_at": TIME,
    },
}
ISSUED = {
    "type": "object",
    "properties": {
        "token": {"type": "string"},
        "user": USER,
        "expires_at": TIME,
        "session": SESSION,
    },
}
PAGE = page_of(USER)
USERS = {"type": "object", "properties": {"items": {"type": "array", "items": USER}}}
API_KEY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "scopes", "prefix", "created_at"],
    "properties": {
        "id": UUID,
        "name": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "prefix": {"type": "string"},
        "created_by": {"type": ["string", "null"], "format": "uuid"},
        "created_at": TIME,
        "last_used_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
ACTIVITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": UUID,
        "occurred_at": TIME,
        "action": {"type": "string"},
        "actor": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["user", "key"]},
                "id": {"type": "string"},
                "name": {"type": "string"},
            },
        },
        "object": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "id": {"type": ["string", "null"]},
                "label": {"type": "string"},
            },
        },
        "portal_id": {"type": ["string", "null"], "format": "uuid"},
        "details": {"type": "object"},
    },
}
ACTORS = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": ACTIVITY["properties"]["actor"]}},
}
KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": UUID}
SESSION_HEADER = {
    "name": api.SESSION_HEADER,
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
}
USER_ID = {"name": "user_id", "in": "path", "required": True, "schema": UUID}

OPERATIONS: list[Operation] = [
    ("post", "/users", "Create a user", api.CreateUserBody, None, [], 201, USER,
     ["409 email_taken", "422 weak_password", "422 invalid_email"]),
    ("post", "/users/ensure",
     "Create or find an invitation's account (a client, or a staff invitation's role)",
     api.EnsureUserBody, None,
     [], 201, {"type": "object", "properties": {"user": USER, "created": {"type": "boolean"}}},
     ["200 created=false (retry)", "409 account_exists", "422 weak_password",
      "422 invalid_locale"]),
    ("get", "/users", "List users", None, api.ListUsersQuery, [], 200, PAGE, ["422"]),
    ("get", "/users/lookup", "Find a user by email", None, api.LookupQuery, [], 200, USER,
     ["404 user_not_found"]),
    ("post", "/users/lookup",
     "Which of these addresses (at most 500) have an account: a batch's invitees",
     api.LookupManyBody, None, [], 200,
     {"type": "object", "properties": {"items": {"type": "array", "items": {
         "type": "object", "properties": {"id": UUID, "email": {"type": "string"}}}}}},
     ["422"]),
    ("post", "/users/by-id", "Get the users among these ids (at most 500)", api.UsersByIdBody,
     None, [], 200, USERS, ["422"]),
    ("get", "/users/{user_id}", "Get a user", None, None, [USER_ID], 200, USER,
     ["404 user_not_found"]),
    ("post", "/users/{user_id}/password", "Set a user's password", api.PasswordBody, None,
     [USER_ID], 204, None, ["404 user_not_found", "422 weak_password"]),
    ("post", "/users/{user_id}/disable", "Disable a user and end their sessions", None, None,
     [USER_ID], 200, USER, ["404 user_not_found", "409 last_administrator"]),
    ("post", "/users/{user_id}/enable", "Let a disabled user log in again", None, None,
     [USER_ID], 200, USER, ["404 user_not_found"]),
    ("post", "/users/{user_id}/erase",
     "Erase a user (right to erasure): delete the account and its sessions, anonymise the"
     " Activity log, announce identity.user.erased; answers the account as it was",
     None, None, [USER_ID], 200, USER, ["404 user_not_found", "409 last_administrator"]),
    ("put", "/users/{user_id}/role", "Change a user's role", api.RoleBody, None, [USER_ID], 200,
     USER, ["404 user_not_found", "409 last_administrator", "422"]),
    ("put", "/users/{user_id}/preferences", "Set a user's Language and Time Zone",
     api.PreferencesBody, None, [USER_ID], 200, USER,
     ["404 user_not_found", "422 invalid_locale", "422 invalid_time_zone"]),
    ("post", "/sessions", "Log in", api.LoginBody, None, [], 201, ISSUED,
     ["401 invalid_credentials"]),
    ("post", "/sessions/issue", "Open a session for a user", api.IssueBody, None, [], 201, ISSUED,
     ["404 user_not_found", "409 account_disabled"]),
    ("get", "/sessions/current", "The session of a token", None, None, [SESSION_HEADER], 200,
     {"type": "object", "properties": {"user": USER, "session": SESSION}}, ["401 no_session"]),
    ("delete", "/sessions/current", "Log out", None, None, [SESSION_HEADER], 204, None,
     ["401 no_session"]),
    ("get", "/settings/login", "Login settings", None, None, [], 200, None, []),
    ("put", "/settings/login", "Change login settings", api.LoginSettingsBody, None, [], 200,
     None, ["422"]),
    ("post", "/password-resets", "Ask for a reset link (always 202)", api.ResetRequestBody, None,
     [], 202, None, []),
    ("get", "/password-resets/validate", "Check a reset link", None, api.TokenQuery, [], 200,
     {"type": "object", "properties": {"email": {"type": "string"}}},
     ["404 reset_invalid", "410 reset_expired"]),
    ("post", "/password-resets/confirm", "Set a password with a reset link",
     api.ResetConfirmBody, None, [], 204, None,
     ["404 reset_invalid", "410 reset_expired", "422 weak_password"]),
    ("post", "/api-keys", "Create an integration key (the key is in this answer only)",
     api.CreateKeyBody, None, [], 201,
     {**API_KEY, "properties": {**API_KEY["properties"], "key": {"type": "string"}}},
     ["422 invalid_key_name", "422 invalid_scopes"]),
    ("get", "/api-keys", "The live integration keys", None, None, [], 200,
     {"type": "object", "properties": {"items": {"type": "array", "items": API_KEY}}}, []),
    ("delete", "/api-keys/{key_id}", "Revoke an integration key", None, None, [KEY_ID], 204,
     None, ["404 key_not_found"]),
    ("post", "/api-keys/verify", "The live key behind a presented key (records its use)",
     api.VerifyKeyBody, None, [], 200, API_KEY, ["401 invalid_api_key"]),
    ("get", "/activity", "The Activity log, newest first", None, api.ActivityQuery, [], 200,
     page_of(ACTIVITY), ["422 invalid_cursor"]),
    ("get", "/activity/actors", "Who appears in the Activity log", None, None, [], 200, ACTORS,
     []),
]  # fmt: skip


openapi = openapi_route("ClientPress identity (internal)", OPERATIONS)
