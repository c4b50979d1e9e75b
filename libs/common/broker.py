"""Who may say what on the broker: one RabbitMQ user per service, what each may publish
and read, the durable topology, and provisioning it all from administrator credentials.

The broker enforces the table (vhost permissions, topic permissions per routing key, and
the AMQP ``user_id`` property, which RabbitMQ checks against the connection's user); the
consumers check it again (``sender_problem``), so an event is acted on only when it came
from the service that owns its type."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .activity import EVENT_ACTIONS

ExchangeKind = Literal["events", "mail"]

SERVICES = ("identity", "portals", "invitations", "mailer", "gateway")
MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Binding:
    exchange: ExchangeKind
    routing_key: str


# The public lifecycle events the mailer turns into webhook deliveries
# (services/mailer/webhooks): facts owned by invitations and portals. The Literal types the
# webhook APIs' bodies (the gateway's /api/v1/webhooks and the mailer's).
WebhookEvent = Literal[
    "invitation.created",
    "invitation.resent",
    "invitation.revoked",
    "invitation.expired",
    "invitation.accepted",
    "portal.access.granted",
    "portal.access.revoked",
]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
# The mailer's queue is declared bound to every one of them, then bound to only those some
# webhook endpoint wants (services/mailer/webhooks/subscription.py): with no endpoint, a
# lifecycle event costs the mailer nothing. So none of them is mandatory on its account.
WEBHOOK_BINDINGS = tuple(Binding("events", key) for key in WEBHOOK_EVENTS)

# The changes the Activity log records (identity keeps it: libs/common/activity.py).
ACTIVITY_EVENTS = tuple(EVENT_ACTIONS)

# The durable queue of each consuming service and what it is bound to. The gateway has no
# durable queue: each replica binds an exclusive one of its own (services/gateway/cache.py).
CONSUMES: dict[str, tuple[Binding, ...]] = {
    "identity": tuple(Binding("events", key) for key in ACTIVITY_EVENTS),
    "portals": (
        Binding("events", "invitation.accepted"),
        Binding("events", "identity.user.disabled"),
        Binding("events", "identity.user.enabled"),
        Binding("events", "identity.user.erased"),
    ),
    "invitations": tuple(
        Binding("events", key)
        for key in (
            # A staff invitation never outlives its sender's right to send it.
            "identity.user.disabled",
            "identity.user.role_changed",
            "identity.user.erased",
            "portal.created",
            "portal.updated",
            "mail.sent",
            "mail.failed",
            "mail.retrying",
        )
    ),
    "mailer": (
        Binding("mail", "mail.requested"),
        Binding("mail", "mail.forget"),
        Binding("mail", "mail.withdraw"),
        *WEBHOOK_BINDINGS,
    ),
    # Requests from other systems wait in a queue of their own, read by a consumer of its
    # own: one integration's flood (a loop, a leaked password) queues there, and the
    # service's own events (a portal created, a delivery reported) never wait behind it,
    # nor find the queue full. Keys here name queues after the prefix, a service's own.
    "invitations.requests": (Binding("events", "invitation.requested"),),
}
REQUESTS_QUEUE = "invitations.requests"

# Bindings a queue had in an earlier release: removed by its service at start, once the
# queues that take their place are bound (Bus.declare_queue), so an upgraded installation
# stops routing there while what already waits in the queue is still consumed.
RETIRED_BINDINGS: dict[str, tuple[Binding, ...]] = {
    "invitations": (Binding("events", "invitation.requested"),),
}

# Commands other systems may send; everything else on the bus is a fact owned by a service.
COMMANDS = frozenset({"invitation.requested"})
# Public lifecycle events an integration may bind to (besides ``invitation.*``).
INTEGRATION_READS = (
    "created",
    "resent",
    "reminded",
    "rejected",
    "revoked",
    "expired",
    "accepted",
)

# Event types by owner, as routing-key patterns (PCRE, anchored). The mail job is the one
# type with two owners; it travels only on the mail exchange.
_OWNED_EVENTS: dict[str, str] = {
    "identity": r"identity\..+",
    "portals": r"portal\..+",
    "invitations": r"invitation\.(?!requested$).+",
    # Branding lives with the mailer, which renders every email (docs/design.md).
    "mailer": r"(?:mail\.(?!requested$|forget$|withdraw$).+|settings\.branding\..+)",
}
MAIL_JOB = "mail.requested"
MAIL_JOB_OWNERS = frozenset({"identity", "invitations"})
# An erased person's addresses, for the mailer alone: identity, which erases, sends it.
MAIL_FORGET = "mail.forget"
MAIL_FORGET_OWNERS = frozenset({"identity"})
# Emails whose invitations were closed or replaced, not to be sent: invitations sends it.
MAIL_WITHDRAW = "mail.withdraw"
MAIL_WITHDRAW_OWNERS = frozenset({"invitations"})
# What each service may publish on the mail exchange, and who owns it.
MAIL_ORDERS = {
    MAIL_JOB: MAIL_JOB_OWNERS,
    MAIL_FORGET: MAIL_FORGET_OWNERS,
    MAIL_WITHDRAW: MAIL_WITHDRAW_OWNERS,
}


def broker_user(prefix: str, service: str) -> str:
    """The broker user a service connects as: ``<BUS_PREFIX>-<service>``."""
    return f"{prefix}-{service}"


_OWNED_PATTERNS = {service: re.compile(rx) for service, rx in _OWNED_EVENTS.items()}


@functools.lru_cache(maxsize=512)
def owners(event_type: str) -> frozenset[str] | None:
    """The services that may send ``event_type``; None for a command from outside."""
    if event_type in COMMANDS:
        return None
    if event_type in MAIL_ORDERS:
        return MAIL_ORDERS[event_type]
    return frozenset(s for s, rx in _OWNED_PATTERNS.items() if rx.fullmatch(event_type))


@functools.lru_cache(maxsize=512)
def _owner_users(prefix: str, allowed: frozenset[str]) -> frozenset[str]:
    return frozenset(broker_user(prefix, s) for s in allowed)


def sender_problem(
    prefix: str, event_type: str, routing_key: str, user_id: str | None
) -> str | None:
    """Why a message must not be acted on, or None when its sender may send it.

    The broker vouches for ``user_id`` and (through topic permissions) for the routing
    key, but not for the body: the envelope's type must be the routing key."""
    if routing_key != event_type:
        return f"routing key {routing_key!r} does not match the event type"
    allowed = owners(event_type)
    if allowed is None:
        return None
    if not allowed:
        return "no service owns this event type"
    if user_id not in _owner_users(prefix, allowed):
        return f"sent by {user_id or 'an unnamed sender'}, not by its owner"
    return None


_MANDATORY = frozenset(
    b.routing_key
    for service, bs in CONSUMES.items()
    for b in bs
    if not (service == "mailer" and b in WEBHOOK_BINDINGS)
)


def mandatory(event_type: str) -> bool:
    """A type some service's durable queue must receive: published mandatory, so an
    unroutable message comes back and stays in the outbox instead of vanishing."""
    return event_type in _MANDATORY


def queue_arguments(prefix: str, service: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": MAX_DELIVERIES,
        "x-dead-letter-exchange": f"{prefix}.dlx",
        "x-dead-letter-routing-key": service,
    }


DEAD_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


# --- limits ---------------------------------------------------------------------------
# What one queue of an installation may hold. Without a bound, one integration publishing
# in a loop (invitation.requested from a leaked password, a bug) fills the broker's disk
# or memory until its alarm blocks every publisher on it: all five services, every
# installation sharing the broker. With it, RabbitMQ refuses what goes beyond
# (``overflow: reject-publish``): a publisher with confirms gets a nack (the services'
# outbox keeps the event and tries again), so the flood fills one queue and stops there:
# the services' queues, and the ones an integration may declare itself (limits_policy).
QUEUE_MAX_MESSAGES = 100_000
QUEUE_MAX_BYTES = 256 * 1024 * 1024
# The largest message RabbitMQ should accept (``max_message_size`` in rabbitmq.conf: a
# node-wide setting, so the deployment's broker configuration carries it, not the
# definitions). RabbitMQ 3.13's own default is 128 MiB; 4.0's is this. The services'
# biggest message, a version 2 mail.requested of 1000 jobs, stays far below it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# What a consumer reads of a message on the public events exchange: every event the
# services publish is a few kilobytes, and an invitation.requested at its fields' limits
# stays below 200 KiB. A bigger one is dead-lettered (reason ``too_large``) unparsed.
MAX_EVENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class QueueLimits:
    """Per queue: at most ``messages`` messages and ``bytes`` bytes of bodies; 0 leaves
    that bound off."""

    messages: int = QUEUE_MAX_MESSAGES
    bytes: int = QUEUE_MAX_BYTES

    def policy_definition(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.messages:
            found["max-length"] = self.messages
        if self.bytes:
            found["max-length-bytes"] = self.bytes
        if found:
            found["overflow"] = "reject-publish"
        return found


def limits_policy_name(prefix: str) -> str:
    return f"{prefix}-queue-limits"


def limits_from_env(environ: Mapping[str, str] = os.environ) -> QueueLimits:
    """``BROKER_QUEUE_MAX_MESSAGES`` and ``BROKER_QUEUE_MAX_BYTES``; ValueError names a
    value that is not a whole number of at least 0."""
    values = {}
    for name, field, default in (
        ("BROKER_QUEUE_MAX_MESSAGES", "messages", QUEUE_MAX_MESSAGES),
        ("BROKER_QUEUE_MAX_BYTES", "bytes", QUEUE_MAX_BYTES),
    ):
        raw = environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{name}={raw!r}: a whole number of at least 0 (0: no limit)")
        values[field] = value
    return QueueLimits(**values)


def limits_policy(
    prefix: str, limits: QueueLimits, vhost: str = "/", integrations: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The policy that bounds the services' queues and their dead-letter queues, and the
    queues ``integrations`` may declare (integration_queues): an integration publishes
    into those through an exchange of its own, so a loop aimed there would otherwise fill
    the broker all the same. None when both bounds are off. Its priority is above an
    operator's catch-all policy at 0 (one policy applies to a queue: the one with the
    highest priority)."""
    definition = limits.policy_definition()
    if not definition:
        return None
    services = "|".join(re.escape(s) for s in CONSUMES)
    queues = [rf"{re.escape(prefix)}\.({services})(\.dead)?"]
    if integrations:
        queues.append(integration_queues(integrations))
    return {
        "vhost": vhost,
        "name": limits_policy_name(prefix),
        "pattern": f"^({'|'.join(queues)})$",
        "apply-to": "queues",
        "priority": 10,
        "definition": definition,
    }


# --- permissions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Grant:
    user: str
    configure: str
    write: str
    read: str
    # exchange -> (write, read) routing-key patterns
    topics: Mapping[str, tuple[str, str]]


NOTHING = "^$"


def _mail_writes(service: str) -> str:
    """What a service may publish on the mail exchange: mail jobs, identity the
    mail.forget of an erasure, invitations the mail.withdraw of emails no longer wanted."""
    keys = [key for key, owners in MAIL_ORDERS.items() if service in owners]
    if not keys:
        return NOTHING
    return "^(" + "|".join(re.escape(key) for key in keys) + ")$"


def service_grant(prefix: str, service: str) -> Grant:
    p = re.escape(prefix)
    own = rf"{p}\.{re.escape(service)}(\..+)?"
    events, mail, dlx = f"{p}\\.events", f"{p}\\.mail", f"{p}\\.dlx"
    # write on the dlx: RabbitMQ asks it of whoever declares a queue dead-lettering there.
    write = [own, events, dlx] if service != "gateway" else [own]
    read = [own, events]
    if service in MAIL_JOB_OWNERS:
        write.append(mail)
    if service == "mailer":
        read.append(mail)
    topics: dict[str, tuple[str, str]] = {
        f"{prefix}.events": (
            f"^{_OWNED_EVENTS[service]}$" if service in _OWNED_EVENTS else NOTHING,
            ".*",
        ),
        f"{prefix}.mail": (
            _mail_writes(service),
            "^mail\\.(requested|forget|withdraw)$" if service == "mailer" else NOTHING,
        ),
    }
    return Grant(
        broker_user(prefix, service),
        configure=f"^{own}$",
        write=f"^({'|'.join(write)})$",
        read=f"^({'|'.join(read)})$",
        topics=topics,
    )


# The names RabbitMQ keeps for itself (amq.topic, amq.rabbitmq.trace, server-named queues).
BROKER_NAMESPACE = "amq"


def check_integration_name(prefix: str, user: str) -> None:
    """An integration owns the queues named ``<user>.…``: never a name whose pattern takes
    in the services' resources (``<prefix>.…``: their queues, dead letters and exchanges),
    and never a service's own user, whose grant it would replace; nor the broker's own
    ``amq.…`` (``amq`` would own ``amq.rabbitmq.trace``, the firehose of every message).
    ValueError names it."""
    services = {broker_user(prefix, s) for s in SERVICES}
    namespaces = (prefix, BROKER_NAMESPACE)
    if any(user == n or user.startswith(f"{n}.") for n in namespaces) or user in services:
        raise ValueError(
            f"BROKER_INTEGRATIONS: {user!r} can't name an integration: its queues would be"
            f" the services' ({prefix}.…) or the broker's own (amq.…), or it is a service's"
            f" own user; choose another name, such as {prefix}-crm"
        )


def check_integration_names(prefix: str, users: Sequence[str]) -> None:
    """check_integration_name for each, and no integration named into another's queues:
    ``crm`` owns ``crm.…``, so beside ``crm.eu`` it would read, purge and delete every
    queue of that one. ValueError names both."""
    for user in users:
        check_integration_name(prefix, user)
    for user in users:
        inside = sorted(other for other in users if other.startswith(f"{user}."))
        if inside:
            raise ValueError(
                f"BROKER_INTEGRATIONS: {user!r} owns the queues named {user}.…, and so every"
                f" queue of {inside[0]!r}: rename one, so that no integration's name is"
                f" another's followed by a dot"
            )


# Server-named queues (amq.gen-…, and aio-pika's client-made amq_<hex>): any integration's.
SERVER_NAMED = r"amq\.gen-.+|amq_[0-9a-f]{32}"


def integration_queues(users: Sequence[str]) -> str:
    """What integrations may name their own: server-named, or ``<user>.…`` (unanchored
    alternatives)."""
    return "|".join([SERVER_NAMED, *(rf"{re.escape(u)}\..+" for u in users)])


def integration_grant(prefix: str, user: str) -> Grant:
    """Publish commands, read the public invitation lifecycle, own queues named
    ``<user>.…`` (or server-named): nothing else, and never the mail exchange."""
    check_integration_name(prefix, user)
    p = re.escape(prefix)
    own = f"({integration_queues([user])})"
    reads = "|".join(INTEGRATION_READS)
    commands = "|".join(re.escape(c) for c in sorted(COMMANDS))
    return Grant(
        user,
        configure=f"^{own}$",
        write=f"^({p}\\.events|{own})$",
        read=f"^({p}\\.events|{own})$",
        topics={
            f"{prefix}.events": (f"^({commands})$", rf"^invitation\.(\*|{reads})$"),
            f"{prefix}.mail": (NOTHING, NOTHING),
        },
    )


# --- definitions ----------------------------------------------------------------------
def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(
    prefix: str,
    passwords: Mapping[str, str],
    *,
    integrations: Mapping[str, str] | None = None,
    vhost: str = "/",
    admin: tuple[str, str] | None = None,
    limits: QueueLimits | None = None,
) -> dict[str, Any]:
    """A RabbitMQ definitions document: users (hashed passwords), permissions, topic
    permissions, exchanges, the services' durable queues and their bindings, and the
    policy that bounds those queues (``limits``, the defaults when None). Imported
    through the management API, ``rabbitmqctl import_definitions`` or ``load_definitions``
    at broker start."""
    check_integration_names(prefix, list(integrations or {}))
    grants = [service_grant(prefix, s) for s in SERVICES if s in passwords]
    grants += [integration_grant(prefix, u) for u in integrations or {}]
    secret_of = {
        **{broker_user(prefix, s): pw for s, pw in passwords.items()},
        **(integrations or {}),
    }
    users = [
        {
            "name": g.user,
            "password_hash": password_hash(secret_of[g.user]),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }
        for g in grants
    ]
    permissions = [
        {"user": g.user, "vhost": vhost, "configure": g.configure, "write": g.write, "read": g.read}
        for g in grants
    ]
    if admin is not None:
        users.append(
            {
                "name": admin[0],
                "password_hash": password_hash(admin[1]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
        )
        permissions.append(
            {"user": admin[0], "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        )
    topic_permissions = [
        {"user": g.user, "vhost": vhost, "exchange": exchange, "write": w, "read": r}
        for g in grants
        for exchange, (w, r) in g.topics.items()
    ]
    exchanges: list[dict[str, Any]] = [
        {
            "name": f"{prefix}.{kind}",
            "vhost": vhost,
            "type": "direct" if kind == "dlx" else "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for kind in ("events", "mail", "dlx")
    ]
    queues, bindings = [], []
    for service, service_bindings in CONSUMES.items():
        queue = f"{prefix}.{service}"
        queues.append(_queue(queue, vhost, queue_arguments(prefix, service)))
        queues.append(_queue(f"{queue}.dead", vhost, DEAD_QUEUE_ARGUMENTS))
        bindings.append(_binding(f"{prefix}.dlx", f"{queue}.dead", service, vhost))
        for b in service_bindings:
            bindings.append(_binding(f"{prefix}.{b.exchange}", queue, b.routing_key, vhost))
    result: dict[str, Any] = {
        "users": users,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }
    policy = limits_policy(prefix, limits or QueueLimits(), vhost, list(integrations or {}))
    if policy is not None:
        result["policies"] = [policy]
    if vhost != "/":
        result["vhosts"] = [{"name": vhost}]
    return result


def _queue(name: str, vhost: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def _binding(source: str, queue: str, key: str, vhost: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


# --- URLs and passwords ---------------------------------------------------------------
def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def user_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).username or "guest")


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (the administrator's ``amqp://``, or a ``postgresql://``) with another
    user's credentials: its host, port, path and options kept."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_heartbeat(amqp_url: str, seconds: int) -> str:
    """``amqp_url`` asking for AMQP heartbeats every ``seconds`` (0: none), unless it
    asks for a value itself (``?heartbeat=``). A broker that stops answering without
    closing the connection (a black hole: a node gone, a NAT table flushed) is noticed
    after about three times this (aiormq's grace), and the robust connection reconnects;
    with aiormq's 60 s it took three minutes, publishing and consuming nothing."""
    parts = urlsplit(amqp_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "heartbeat" for name, _ in query):
        return amqp_url
    return urlunsplit(parts._replace(query=urlencode([*query, ("heartbeat", str(seconds))])))


def new_passwords(names: Sequence[str] = SERVICES) -> dict[str, str]:
    return {name: secrets.token_urlsafe(24) for name in names}


def passwords_from_env(
    environ: Mapping[str, str] = os.environ, *, login: str = "BROKER"
) -> dict[str, str]:
    """``<SERVICE>_<login>_PASSWORD`` (the broker's, or ``DATABASE``) for each service
    that has one."""
    found = {}
    for service in SERVICES:
        value = environ.get(f"{service.upper()}_{login}_PASSWORD", "")
        if value:
            found[service] = value
    return found


def integrations_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``BROKER_INTEGRATIONS``: ``name=password`` pairs, comma-separated."""
    found = {}
    for item in environ.get("BROKER_INTEGRATIONS", "").split(","):
        name, _, password = item.strip().partition("=")
        if name and password:
            found[name] = password
    return found
