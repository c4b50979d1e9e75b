"""The OpenAPI 3.1 document of /api/v1 (hand-written; kept beside api.py)."""

from __future__ import annotations

from typing import Any

from libs.common.openapi import NULL_TIME, TIME, UUID


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


ERRORS = {
    "401": {"$ref": "#/components/responses/Error"},
    "403": {"$ref": "#/components/responses/Error"},
    "422": {"$ref": "#/components/responses/Error"},
}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
}
CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"}}
STATUS = {"type": "string", "enum": ["active", "pending", "archived"]}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **ERRORS}, **extra}


PORTAL = {
    "type": "object",
    "properties": {
        "id": UUID,
        "title": {"type": "string"},
        "slug": {"type": "string"},
        "content": {"type": ["string", "null"], "description": "Markdown"},
        "content_html": {"type": ["string", "null"], "description": "sanitised HTML"},
        "status": STATUS,
        "client_id": {"type": ["string", "null"], "format": "uuid"},
        "sub_client_ids": {"type": "array", "items": UUID},
        "revision": {"type": "integer"},
        "created_at": TIME,
        "updated_at": TIME,
    },
}
INVITATION = {
    "type": "object",
    "properties": {
        "id": UUID,
        "email": {"type": "string", "format": "email"},
        "portal_id": UUID,
        "portal_title": {"type": "string"},
        "portal_slug": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "accepted", "expired", "revoked"]},
        "sent_at": TIME,
        "expires_at": TIME,
        "delivery": {"type": "string", "enum": ["queued", "sent", "failed"]},
        "delivery_error": {"type": ["string", "null"]},
        "sub_client": {"type": ["boolean", "null"]},
        "invited_by": {"type": ["string", "null"]},
        "accepted_at": NULL_TIME,
        "revoked_at": NULL_TIME,
        "created_at": TIME,
        "send_count": {"type": "integer"},
    },
}
USER = {
    "type": "object",
    "properties": {
        "id": UUID,
        "email": {"type": "string", "format": "email"},
        "role": {"type": "string", "enum": ["administrator", "client"]},
        "disabled": {"type": "boolean"},
        "created_at": TIME,
    },
}
ACCESS = {
    "type": "object",
    "properties": {
        "invitation_expiry_days": {"type": "integer", "enum": [7, 14, 21, 30]},
        "login_redirect": {"type": "boolean"},
    },
}
PORTAL_WRITE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "slug": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$", "maxLength": 80},
        "content": {"type": "string", "maxLength": 60000},
        "status": STATUS,
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "ClientPress API", "version": "1.0.0"},
    "servers": [{"url": "/api/v1"}],
    "security": [{"session": [], "csrf": []}, {"apiKey": []}],
    "paths": {
        "/portals": {
            "get": _op(
                "List portals",
                {"200": _json(_page("Portal"))},
                parameters=[
                    {"name": "status", "in": "query", "schema": STATUS},
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    LIMIT,
                    CURSOR,
                ],
            ),
            "post": _op(
                "Create a portal",
                {
                    "201": _json(_ref("Portal"), "Created"),
                    "409": {"$ref": "#/components/responses/Error"},
                },
                requestBody=_body({**PORTAL_WRITE, "required": ["title"]}),
            ),
        },
        "/portals/{id}": {
            "parameters": [ID_PARAM],
            "get": _op(
                "Get a portal",
                {"200": _json(_ref("Portal")), "404": {"$ref": "#/components/responses/Error"}},
            ),
            "patch": _op(
                "Update title, slug, content or status",
                {"200": _json(_ref("Portal")), "404": {"$ref": "#/components/responses/Error"}},
                requestBody=_body(PORTAL_WRITE),
            ),
        },
        "/portals/{id}/client": {
            "parameters": [ID_PARAM],
            "put": _op(
                "Set (or clear) the primary client",
                {"200": _json(_ref("Portal"))},
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["user_id"],
                        "properties": {"user_id": {"type": ["string", "null"], "format": "uuid"}},
                    }
                ),
            ),
        },
        "/portals/{id}/sub-clients": {
            "parameters": [ID_PARAM],
            "put": _op(
                "Replace the sub-clients",
                {"200": _json(_ref("Portal"))},
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["user_ids"],
                        "properties": {"user_ids": {"type": "array", "items": UUID}},
                    }
                ),
            ),
        },
        "/portals/{id}/invitations": {
            "parameters": [ID_PARAM],
            "post": _op(
                "Invite a client by email (resends when one is already pending)",
                {
                    "201": _json(_ref("InviteResult"), "Created (or a repeat of a key)"),
                    "200": _json(_ref("InviteResult"), "Already pending: resent"),
                    "404": {"$ref": "#/components/responses/Error"},
                    "409": {"$ref": "#/components/responses/Error"},
                    "422": {"$ref": "#/components/responses/Error"},
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "Your stable id for this request: repeating it returns the"
                            " same invitation and sends no second email; used with another"
                            " email or portal it answers 409 idempotency_key_reused."
                        ),
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["email"],
                        "additionalProperties": False,
                        "properties": {
                            "email": {"type": "string", "format": "email"},
                            "sub_client": {"type": "boolean"},
                        },
                    }
                ),
            ),
        },
        "/invitations": {
            "get": _op(
                "List invitations, newest first",
                {"200": _json(_page("Invitation"))},
                parameters=[
                    {"name": "status", "in": "query", "schema": INVITATION["properties"]["status"]},  # type: ignore[index]
                    {"name": "portal_id", "in": "query", "schema": UUID},
                    LIMIT,
                    CURSOR,
                ],
            ),
        },
        "/invitations/{id}/resend": {
            "parameters": [ID_PARAM],
            "post": _op(
                "Resend with a new link and expiry",
                {"200": _json(_ref("Invitation")), "409": {"$ref": "#/components/responses/Error"}},
            ),
        },
        "/invitations/{id}/revoke": {
            "parameters": [ID_PARAM],
            "post": _op(
                "Revoke the link",
                {"200": _json(_ref("Invitation")), "409": {"$ref": "#/components/responses/Error"}},
            ),
        },
        "/settings/access": {
            "get": _op("Access & Login settings", {"200": _json(_ref("AccessSettings"))}),
            "put": _op(
                "Change Access & Login settings (fields left out are unchanged)",
                {"200": _json(_ref("AccessSettings"))},
                requestBody=_body(_ref("AccessSettings")),
            ),
        },
        "/users": {
            "get": _op(
                "List users",
                {"200": _json(_page("User"))},
                parameters=[
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    LIMIT,
                    CURSOR,
                ],
            ),
        },
    },
    "components": {
        "schemas": {
            "Portal": PORTAL,
            "Invitation": INVITATION,
            "User": USER,
            "AccessSettings": ACCESS,
            "InviteResult": {
                "type": "object",
                "properties": {
                    "invitation": _ref("Invitation"),
                    "outcome": {"type": "string", "enum": ["created", "resent"]},
                },
            },
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
        },
        "responses": {"Error": _json(_ref("Error"), "Error")},
        "securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": "cp_session"},
            "csrf": {
                "type": "apiKey",
                "in": "header",
                "name": "X-CSRF-Token",
                "description": "equal to the cp_csrf cookie; needed on POST/PUT/PATCH/DELETE",
            },
            "apiKey": {"type": "http", "scheme": "bearer", "description": "GATEWAY_API_KEY"},
        },
    },
}
