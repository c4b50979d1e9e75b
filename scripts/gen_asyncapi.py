"""Generate docs/asyncapi.yaml from the event models in libs/common/events.py.

    python scripts/gen_asyncapi.py           # write docs/asyncapi.yaml
    python scripts/gen_asyncapi.py --check   # exit 1 if the committed file is stale

The output is deterministic (no clock, no random ids), so tests/test_asyncapi.py can
compare the committed file with a fresh generation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from libs.common.activity import EVENT_ACTIONS  # noqa: E402
from libs.common.broker import WEBHOOK_EVENTS  # noqa: E402
from libs.common.events import EVENTS, PRIVATE_TYPES, Envelope  # noqa: E402

TARGET = ROOT / "docs" / "asyncapi.yaml"
REF = "#/components/schemas/{model}"
WHEN = "2025-01-15T10:30:00Z"
PORTAL = "7d1f3c2a-5b8e-4f0a-9c6d-2e4b8a1f0c3d"
INVITATION = "3a9e6b1c-0d2f-4e8a-b7c5-6f1d9e2a4b80"
USER = "c5b2e8f1-4a7d-4c3e-9f0b-1d6a8e2c5f47"
MAIL = "e1d4a7b0-9c3f-4b6e-8a2d-5f0c7b1e3a96"
SESSION = "9b0e3d6a-2f5c-4a8b-b1e7-4c9f2a6d0e13"
KEY = "5e8c1a3f-7b2d-4f6e-a9c0-3d1b7e5f2a84"
STAFF = "f2a6c9e1-3b5d-4a7f-8e0c-6d2b9f1a4c73"
# The envelope's actor in the examples of the changes the Activity log records.
ACTOR = {"type": "user", "id": STAFF, "name": "dana@agency.example"}
EMAIL = "client@example.com"
STAFF_EMAIL = "sam@agency.example"

# One example ``data`` per event; validated against its model when generating.
EXAMPLES: dict[str, dict[str, Any]] = {
    "identity.user.created": {"user_id": USER, "email": EMAIL, "role": "client"},
    "identity.user.disabled": {"user_id": USER},
    "identity.user.enabled": {"user_id": USER},
    "identity.user.erased": {"user_id": USER},
    "identity.user.role_changed": {"user_id": USER, "role": "staff", "previous_role": "client"},
    "identity.user.preferences_changed": {
        "user_id": USER,
        "locale": "de",
        "time_zone": "Europe/Berlin",
    },
    "identity.session.revoked": {"user_id": USER, "reason": "logout", "session_id": SESSION},
    "identity.key.created": {
        "key_id": KEY,
        "name": "CRM sync",
        "scopes": ["invitations:write", "portals:read"],
    },
    "identity.key.revoked": {
        "key_id": KEY,
        "name": "CRM sync",
        "scopes": ["invitations:write", "portals:read"],
    },
    "identity.settings.changed": {
        "changes": {"login_redirect": True},
        "previous": {"login_redirect": False},
    },
    "portal.created": {
        "portal_id": PORTAL,
        "slug": "acme-rebrand",
        "title": "Acme Rebrand",
        "status": "pending",
        "revision": 1,
    },
    "portal.updated": {
        "portal_id": PORTAL,
        "slug": "acme-rebrand",
        "title": "Acme Rebrand",
        "status": "active",
        "revision": 2,
    },
    "portal.access.granted": {
        "portal_id": PORTAL,
        "user_id": USER,
        "role": "client",
        "idempotency_key": "crm-deal-4711",
    },
    "portal.access.revoked": {"portal_id": PORTAL, "user_id": USER, "role": "sub_client"},
    "invitation.requested": {
        "portal_slug": "acme-rebrand",
        "email": EMAIL,
        "idempotency_key": "crm-deal-4711",
        "sub_client": False,
        "invited_by": "crm@agency.example",
        "expires_in_days": 21,
        "personal_message": "Hi Jane, here is the portal for the rebrand. Talk soon, Ann",
    },
    "invitation.created": {
        "invitation_id": INVITATION,
        "portal_id": PORTAL,
        "email": EMAIL,
        "expires_at": "2025-01-29T10:30:00Z",
        "invited_by": "crm@agency.example",
        "idempotency_key": "crm-deal-4711",
        "sub_client": False,
        "expires_in_days": 21,
    },
    "invitation.rejected": {
        "reason": "portal_not_active",
        "message": "This portal is pending; only Active portals take invitations.",
        "idempotency_key": "crm-deal-4711",
        "email": EMAIL,
        "portal_slug": "acme-rebrand",
    },
    "invitation.resent": {
        "invitation_id": INVITATION,
        "portal_id": PORTAL,
        "email": EMAIL,
        "expires_at": "2025-02-05T09:00:00Z",
        "expires_in_days": 21,
        "idempotency_key": "crm-deal-4711",
        "reason": "staff",
        "invited_by": "crm@agency.example",
    },
    "invitation.reminded": {
        "invitation_id": INVITATION,
        "portal_id": PORTAL,
        "email": EMAIL,
        "expires_at": "2025-01-29T10:30:00Z",
    },
    "invitation.revoked": {
        "invitation_id": INVITATION,
        "portal_id": PORTAL,
        "email": EMAIL,
        "idempotency_key": "crm-deal-4711",
        "invited_by": "crm@agency.example",
    },
    "invitation.expired": {"invitation_id": INVITATION, "portal_id": PORTAL, "email": EMAIL},
    "invitation.accepted": {
        "invitation_id": INVITATION,
        "portal_id": PORTAL,
        "email": EMAIL,
        "user_id": USER,
        "sub_client": False,
        "idempotency_key": "crm-deal-4711",
        "invited_by": "crm@agency.example",
    },
    "invitation.settings.changed": {
        "changes": {"invitation_expiry_days": 21},
        "previous": {"invitation_expiry_days": 14},
    },
    "invitation.staff.created": {
        "invitation_id": INVITATION,
        "email": STAFF_EMAIL,
        "role": "staff",
        "expires_at": "2025-01-29T10:30:00Z",
        "invited_by": "dana@agency.example",
    },
    "invitation.staff.resent": {
        "invitation_id": INVITATION,
        "email": STAFF_EMAIL,
        "role": "staff",
        "expires_at": "2025-02-05T10:30:00Z",
        "invited_by": "dana@agency.example",
    },
    "invitation.staff.revoked": {
        "invitation_id": INVITATION,
        "email": STAFF_EMAIL,
        "role": "staff",
    },
    "invitation.staff.expired": {
        "invitation_id": INVITATION,
        "email": STAFF_EMAIL,
        "role": "administrator",
    },
    "invitation.staff.accepted": {
        "invitation_id": INVITATION,
        "email": STAFF_EMAIL,
        "role": "staff",
        "user_id": USER,
    },
    "mail.requested": {
        "mail_id": MAIL,
        "template": "invitation",
        "to": EMAIL,
        "ref_type": "invitation",
        "ref_id": INVITATION,
        "context": {
            "accept_url": "https://portal.example.com/invitations/accept?token=<one-time token>",
            "portal_title": "Acme Rebrand",
            "site_name": "portal.example.com",
            "expires_at": "2025-01-29T10:30:00+00:00",
            "invited_by": "crm@agency.example",
            "expires_in_days": "21",
            "personal_message": "Hi Jane, here is the portal for the rebrand. Talk soon, Ann",
        },
    },
    "mail.forget": {"sealed": "<Fernet token under MAIL_JOB_KEY: the addresses, a JSON list>"},
    "mail.withdraw": {"mail_ids": [MAIL]},
    "mail.sent": {
        "mail_id": MAIL,
        "template": "invitation",
        "ref_type": "invitation",
        "ref_id": INVITATION,
    },
    "mail.retrying": {
        "mail_id": MAIL,
        "template": "invitation",
        "ref_type": "invitation",
        "ref_id": INVITATION,
        "attempt": 3,
        "next_attempt_at": "2025-01-15T10:30:14Z",
        "reason": "smtp_deferred",
        "smtp_code": 451,
    },
    "mail.failed": {
        "mail_id": MAIL,
        "template": "invitation",
        "ref_type": "invitation",
        "ref_id": INVITATION,
        "reason": "550 5.1.1 no such user",
        "attempts": 1,
    },
    "settings.branding.changed": {"changed": ["agency_name", "logo"]},
}

# Who publishes each event: "inbound" ones are published by other systems.
PUBLISHERS = {
    "identity.": "identity",
    "portal.": "portals",
    "invitation.requested": "inbound",
    "invitation.": "invitations",
    "mail.requested": "invitations, identity",
    "mail.forget": "identity",
    "mail.withdraw": "invitations",
    "mail.": "mailer",
    "settings.branding.": "mailer",
}

# A later version of a type: its example data and what it adds to the type's summary.
LATER_VERSIONS: dict[tuple[str, int], tuple[dict[str, Any], str]] = {
    ("mail.requested", 2): (
        {"jobs": [EXAMPLES["mail.requested"]]},
        " Version 2 carries several jobs in one message (jobs, each a version 1 job): a"
        " batch's first invitations. The mailer takes both versions.",
    ),
}

SUMMARIES = {
    "identity.user.created": "A user account was created.",
    "identity.user.disabled": (
        "A user account was disabled; its sessions end, it leaves every portal, and the"
        " staff invitations it sent, still open, are revoked."
    ),
    "identity.user.enabled": "A disabled user account may log in again.",
    "identity.user.erased": (
        "An administrator erased the account (the right to erasure): it and its sessions are"
        " deleted, and each service removes or anonymises what it keeps of the person. Carries"
        " the user's id only, never personal data."
    ),
    "identity.user.role_changed": (
        "A user's role changed (Administrator, Staff, Client); it applies to their next"
        " request. A role other than Administrator revokes the staff invitations the user"
        " sent, still open."
    ),
    "identity.user.preferences_changed": (
        "A person saved their own Language and Time Zone on Account (null: not chosen);"
        " gateways forget their cached copy of the user."
    ),
    "identity.session.revoked": "One session (or, without session_id, all of a user's) ended.",
    "identity.key.created": (
        "An integration key was created (Settings → API Keys, POST /api/v1/keys); never the key."
    ),
    "identity.key.revoked": "An integration key was revoked; calls made with it are refused.",
    "identity.settings.changed": (
        "Login Redirect was changed: changes has the new value, previous the old one."
    ),
    "portal.created": "A portal was created; data is its current public state.",
    "portal.updated": "A portal's title, slug or status changed; data is its current state.",
    "portal.access.granted": "A user became the portal's Client or a Sub-Client.",
    "portal.access.revoked": "A user lost access to a portal.",
    "invitation.requested": (
        "Inbound: another system asks for an invitation. Answered with invitation.created "
        "(or invitation.resent, when the email had a pending invitation to that portal) or "
        "invitation.rejected carrying the same correlation_id. The same idempotency_key "
        "never makes a second invitation."
    ),
    "invitation.created": "An invitation was sent (answer to invitation.requested, too).",
    "invitation.rejected": (
        "An invitation.requested was refused. reason is machine-readable: portal_not_found, "
        "portal_not_active, invalid_email, already_has_access, missing_portal, "
        "ambiguous_portal (portal_id and portal_slug name different portals, or portal_ids "
        "came with either), invalid_expires_in_days, personal_message_too_long, "
        "invalid_character (invited_by or personal_message holds a character that reorders "
        "the text around it), invalid_locale (locale is not en, de, fr or es), "
        "idempotency_key_reused (the key already made an invitation to another address or "
        "portal), no_portals, too_many_portals, duplicate_portal, invitation_pending "
        "(portal_ids: none, more than 20, one twice, or one with a pending invitation), or "
        "send_rate_limited (the invitation was pending and a new link would pass a cap on "
        "new links; retry_at says when the next one can go), or integration_rate_limited "
        "(the sender's broker user passed INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR; "
        "nothing was sent; retry_at says when the next request fits)."
    ),
    "invitation.resent": (
        "A new link and expiry were sent; the old link no longer works (its page says it was "
        "replaced). reason says who asked: staff, api, invitation_requested or "
        "requested_by_invitee (Email me a new link)."
    ),
    "invitation.reminded": (
        "The invitation's one reminder (Invitation Reminder: 1 or 3 days before expiry) went "
        "out with a fresh link; the earlier link no longer works; expires_at is unchanged."
    ),
    "invitation.revoked": "The invitation was revoked; its link no longer works.",
    "invitation.expired": "The expiry sweep marked a pending invitation as expired.",
    "invitation.accepted": "The invitation was accepted and the portal attached to user_id.",
    "invitation.staff.created": (
        "A staff invitation (Users → Invite Staff: a role, Administrator or Staff, and no "
        "portal) was sent. Staff invitations have their own types, so invitation.accepted "
        "always names a portal, and integrations bound to invitation.* never see them."
    ),
    "invitation.staff.resent": (
        "A staff invitation got a new link and expiry; the old link no longer works."
    ),
    "invitation.staff.revoked": "A staff invitation was revoked; its link no longer works.",
    "invitation.staff.expired": "The expiry sweep marked a pending staff invitation as expired.",
    "invitation.staff.accepted": (
        "A staff invitation was accepted: user_id has an account with at least role (a new "
        "account is created with it; an existing Client or Staff is raised to it; an "
        "Administrator invited as Staff stays an Administrator)."
    ),
    "invitation.settings.changed": (
        "Invitation Link Expiry or Invitation Reminder was changed: changes has the new values,"
        " previous the old ones."
    ),
    "mail.requested": (
        "Internal mail job, on the private mail exchange only: it carries one-time links. "
        "Only the mailer binds it; not part of the public contract."
    ),
    "mail.forget": (
        "Internal, on the private mail exchange only: the address of a person just erased"
        " (identity.user.erased), sealed under MAIL_JOB_KEY, whose delivery records and"
        " webhook deliveries the mailer forgets. Only the mailer binds it; not part of the"
        " public contract."
    ),
    "mail.withdraw": (
        "Internal, on the private mail exchange only: emails whose invitation was closed or"
        " given a new link (Revoke, Resend, a reminder, accept, expiry, erasure) before they"
        " went. The mailer sends none of them still waiting (queued, or waiting for a"
        " retry), nor one whose job comes later; one already being sent finishes. Mail ids"
        " only. Only the mailer binds it; not part of the public contract."
    ),
    "mail.sent": "The mailer delivered a mail job to the SMTP server.",
    "settings.branding.changed": (
        "Settings → Branding was saved (Agency Name, Logo, Accent Colour, Reply-To, Footer "
        "Text): changed lists the fields whose value changed, never the values. Published "
        "by the mailer, which keeps the branding; gateways forget their copy on it."
    ),
    "mail.retrying": (
        "A send failed for now (SMTP answered 4xx, or did not answer: reason smtp_deferred "
        "or smtp_unreachable) and waits until next_attempt_at. attempt counts the tries "
        "made. Retries back off exponentially, with jitter, to at most "
        "MAILER_RETRY_MAX_SECONDS apart, until MAILER_GIVE_UP_AFTER_SECONDS after queueing."
    ),
    "mail.failed": (
        "The mailer gave up on a mail job: reason smtp_rejected (a 5xx answer, at once), "
        "max_attempts (still failing when its retry horizon ended), invalid_address or "
        "invalid_context."
    ),
}


def _publisher(event_type: str) -> str:
    for prefix, who in PUBLISHERS.items():
        if event_type == prefix or (prefix.endswith(".") and event_type.startswith(prefix)):
            return who
    raise KeyError(event_type)


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    envelope = Envelope.model_json_schema(ref_template=REF)
    for name, sub in sorted(envelope.pop("$defs", {}).items()):
        schemas[name] = sub
    envelope["description"] = (
        "Every event's JSON body. AMQP message_id = id, correlation_id = correlation_id, "
        "type = type; persistent delivery, content type application/json."
    )
    schemas["Envelope"] = envelope
    schemas["TraceHeaders"] = TRACE_HEADERS
    for model in dict.fromkeys(EVENTS.values()):
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in sorted(schema.pop("$defs", {}).items()):
            schemas[name] = sub
        schemas[model.__name__] = schema
    return schemas


def _message_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}"


def _message(event_type: str, version: int, model_name: str) -> dict[str, Any]:
    example_data, note = LATER_VERSIONS.get((event_type, version), (EXAMPLES[event_type], ""))
    data = EVENTS[(event_type, version)].model_validate(example_data)
    example = {
        "id": "0b6f2d4e-8a1c-4e3b-9d7f-5c2a0e8b1d64",
        "type": event_type,
        "version": version,
        "occurred_at": WHEN,
        "source": "crm" if event_type == "invitation.requested" else _publisher(event_type),
        "correlation_id": "crm-deal-4711-request-1",
        "data": data.model_dump(mode="json", exclude_none=True),
    }
    if event_type in EVENT_ACTIONS:
        example["actor"] = ACTOR
    Envelope.model_validate(example)
    message: dict[str, Any] = {
        "name": _message_name(event_type, version),
        "title": f"{event_type} (version {version})",
        "summary": SUMMARIES[event_type] + note,
        "contentType": "application/json",
        "correlationId": {
            "description": "Follows a request through HTTP calls and events.",
            "location": "$message.payload#/correlation_id",
        },
        "description": (
            "AMQP properties mirror the envelope: message_id = id, correlation_id = "
            "correlation_id, type = type; content type application/json, persistent."
        ),
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/Envelope"},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": event_type},
                        "version": {"const": version},
                        "data": {"$ref": REF.format(model=model_name)},
                    },
                },
            ]
        },
        "headers": {"$ref": REF.format(model="TraceHeaders")},
        "bindings": {"amqp": {"messageType": event_type, "bindingVersion": "0.2.0"}},
        "examples": [{"name": event_type.replace(".", "-"), "payload": example}],
    }
    if event_type in PRIVATE_TYPES:
        message["x-internal"] = True
    return message


# The AMQP headers of every message: the W3C trace context, when traces are on.
TRACE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "Optional. Set when the publishing service traces (OTEL_EXPORTER_OTLP_ENDPOINT): "
        "the W3C trace context of the request or message that caused the event, which "
        "consumers continue (docs/observability.md). An integration may set it on "
        "invitation.requested to have its own trace continue; nothing depends on it."
    ),
    "properties": {
        "traceparent": {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        },
        "tracestate": {"type": "string"},
    },
}


def _channel(event_type: str, message_names: list[str]) -> dict[str, Any]:
    private = event_type in PRIVATE_TYPES
    exchange = "clientpress.mail" if private else "clientpress.events"
    publisher = _publisher(event_type)
    inbound = publisher == "inbound"
    description = SUMMARIES[event_type] + (
        " Published by other systems; consumed by the invitations service from a queue"
        " of their own, `<prefix>.invitations.requests` (dead letters in its `.dead`"
        " queue), so a flood of requests never holds back the service's own events."
        if inbound
        else f" Published by the {publisher} service."
    )
    if event_type in WEBHOOK_EVENTS:
        description += (
            " Also POSTed to the webhook endpoints that subscribe to it, as"
            ' {"type", "timestamp", "data"} (README "Webhooks").'
        )
    channel: dict[str, Any] = {
        "description": description,
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": exchange,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": "0.2.0",
            }
        },
        # AsyncAPI 2: "publish" = others send it to ClientPress; "subscribe" = others
        # may receive it from ClientPress.
        ("publish" if inbound else "subscribe"): {
            "operationId": ("request" if inbound else "on_") + event_type.replace(".", "_"),
            "message": (
                {"oneOf": [{"$ref": f"#/components/messages/{name}"} for name in message_names]}
                if len(message_names) > 1
                else {"$ref": f"#/components/messages/{message_names[0]}"}
            ),
        },
    }
    if private:
        channel["x-internal"] = True
    return channel


def build() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    versions: dict[str, list[str]] = {}
    for (event_type, version), model in EVENTS.items():
        name = _message_name(event_type, version)
        messages[name] = _message(event_type, version, model.__name__)
        versions.setdefault(event_type, []).append(name)
    for event_type, names in versions.items():
        channels[event_type] = _channel(event_type, names)
    return {
        "asyncapi": "2.6.0",
        "id": "urn:clientpress:events",
        "info": {
            "title": "ClientPress events",
            "version": "1.0.0",
            "description": (
                "Events on RabbitMQ. Public events travel on the durable topic exchange "
                "`clientpress.events`; the routing key is the event type (each channel "
                "below). An installation's BUS_PREFIX replaces `clientpress` in every "
                "exchange and queue name (`<prefix>.events`). `mail.requested` is internal: "
                "it travels only on the private `<prefix>.mail` exchange, because it "
                "carries one-time links. Other systems invite clients by publishing "
                "`invitation.requested` (see docs/inviting-from-other-systems.md).\n\n"
                "Every connection logs in as its own broker user and sets the AMQP "
                "`user_id` property (RabbitMQ checks it). Each service may publish only "
                "the events it owns (topic permissions); consumers act on an internal "
                "event only when `user_id` is its owner's user (`<prefix>-identity`, "
                "`<prefix>-portals`, `<prefix>-invitations`, `<prefix>-mailer`) and the "
                "envelope's `type` is the routing key. An integration's user may publish "
                "`invitation.requested` and bind `invitation.*`, nothing else.\n\n"
                "Generated by scripts/gen_asyncapi.py from libs/common/events.py; do not "
                "edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "url": "amqp://127.0.0.1:5672/",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of `make run` (AMQP_URL).",
                "security": [{"brokerUser": []}],
            }
        },
        "channels": channels,
        "components": {
            "schemas": _schemas(),
            "messages": messages,
            "securitySchemes": {
                "brokerUser": {
                    "type": "userPassword",
                    "description": (
                        "A RabbitMQ user of your own, made by the provisioning "
                        "(BROKER_INTEGRATIONS; libs/common/provision.py), whose name you "
                        "also send as the AMQP user_id property."
                    ),
                }
            },
        },
    }


def render() -> str:
    header = "# Generated by scripts/gen_asyncapi.py from libs/common/events.py. Do not edit.\n"
    body = str(yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100))
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_asyncapi.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
