"""Webhook rules: the event types offered, signing secrets and Standard Webhooks
signatures, the payload, which targets are refused, the retry schedule. Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from yarl import URL

from libs.common.broker import WEBHOOK_EVENTS

from ..domain import clip_error

# The public lifecycle events an endpoint may subscribe to (the bus's own type names;
# the mailer's queue is bound to them in libs/common/broker.py).
EVENT_TYPES = WEBHOOK_EVENTS
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
# Retries back off exponentially to at most an hour apart and stop a day after the
# delivery was queued (or redelivered): then it is "failed".
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 3600.0
GIVE_UP_AFTER_SECONDS = 86_400.0
MAX_URL_LENGTH = 2000
MAX_ERROR_LENGTH = 300
# Fields never copied into a payload, whatever an event grows in a later version.
SECRET_FIELDS = frozenset({"token", "link", "url", "password", "password_hash", "secret"})


class RefusedTarget(ValueError):
    """A URL webhooks must not be sent to (not http(s), or not a public address).
    ``problem`` names why for a screen that says it in another language (not_http,
    credentials, port, unresolvable, private), with the ``host`` it is about."""

    def __init__(self, message: str, problem: str, host: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.host = host


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after ``whsec_`` (Standard Webhooks)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Iterable[str], message_id: str, timestamp: int, body: bytes) -> str:
    """Space-separated signatures, one per secret (two while a rotation overlaps)."""
    return " ".join(sign(s, message_id, timestamp, body) for s in secrets_)


def headers(
    secrets_: Iterable[str], message_id: uuid.UUID, timestamp: int, body: bytes
) -> dict[str, str]:
    msg_id = f"msg_{message_id.hex}"
    return {
        "content-type": "application/json",
        "user-agent": "ClientPress-Webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, msg_id, timestamp, body),
    }


def payload(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """``{"type", "timestamp", "data"}``: the public event's data, which never holds a
    secret (docs/design.md), with a second guard against one arriving in a later version."""
    safe = {k: v for k, v in data.items() if k not in SECRET_FIELDS}
    return orjson.dumps({"type": event_type, "timestamp": occurred_at.isoformat(), "data": safe})


def check_url(url: str) -> tuple[str, int]:
    """An absolute http(s) URL with a host: returns (host, port)."""
    if len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise RefusedTarget("The URL must be one http:// or https:// address.", "not_http")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget("The URL must be one http:// or https:// address.", "not_http")
    if parts.username is not None or parts.password is not None:
        # It would be shown in every list and log; the signature is the authentication.
        raise RefusedTarget("The URL must not carry a user name or password.", "credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedTarget("The URL's port is not a number from 1 to 65535.", "port") from None
    # The host as the HTTP client (yarl) will connect to it: it normalises a name (IDNA:
    # full-width or circled digits, ideographic full stops) that may turn out to be an IP
    # address, which it then reaches without asking the resolver.
    try:
        host = URL(url).host
    except ValueError:
        host = None
    if not host:
        raise RefusedTarget("The URL must be one http:// or https:// address.", "not_http")
    return host, port


# IPv6 ranges whose last 32 bits are an IPv4 address that the network delivers to (a
# NAT64 gateway, the way out of an IPv6-only cluster; SIIT; the old IPv4-compatible
# form): such an address is as public as that IPv4 address.
_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(net)
    for net in ("64:ff9b::/96", "::ffff:0:0:0/96", "::ffff:0:0/96", "::/96")
)
# Never public, whatever the Python version's ``is_global`` says: the local-use NAT64
# prefix (RFC 8215) and the deprecated site-local range.
_NEVER_PUBLIC = tuple(ipaddress.IPv6Network(net) for net in ("64:ff9b:1::/48", "fec0::/10"))


def public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is on the public internet: loopback, private,
    link-local (cloud metadata), shared, multicast and reserved ranges are not, nor an
    IPv6 address that carries one of them (NAT64, 6to4, IPv4-mapped or -compatible)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER_PUBLIC):
            return False
        if ip.sixtofour is not None:
            return public_address(str(ip.sixtofour))
        if any(ip in net for net in _CARRIES_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.is_global and not ip.is_multicast


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Every address the host resolves to must be public: one private answer is enough
    for a rebinding attacker."""
    found = list(addresses)
    if not found:
        raise RefusedTarget(f"{host} does not resolve.", "unresolvable", host)
    if not all(public_address(a) for a in found):
        raise RefusedTarget(
            f"{host} is a loopback, private or link-local address; webhooks go only to"
            " public addresses.",
            "private",
            host,
        )


def ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: a status code (None: no answer) and its duration."""

    status: int | None
    duration_ms: int
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


def clip(text: str) -> str:
    return clip_error(text, MAX_ERROR_LENGTH)
