"""Pure gateway rules: safe redirects, CSRF comparison, password form checks, email
normalisation, the client's address behind trusted proxies, rate-limit windows and the
fixed flash messages. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Hashable, Iterable

from libs.common.colours import darker, readable_on
from libs.common.email import email_key
from libs.common.passwords import password_problem

from .answers import BrandingAnswer
from .i18n import N_, gettext
from .i18n import when as when

EXPIRY_CHOICES = (7, 14, 21, 30)
# Invitation Reminder: days before expiry (0 = Off) and how the select names them.
REMINDER_CHOICES = ((0, "Off"), (1, "1 day before expiry"), (3, "3 days before expiry"))
STATUSES = ("active", "pending", "archived")
INVITATION_STATUSES = ("pending", "accepted", "expired", "revoked")
MAX_PERSONAL_MESSAGE = 1000
# Several portals, one invitation: at most this many portals in one.
MAX_GROUP_PORTALS = 20
PERSONAL_MESSAGE_TOO_LONG = N_("The Personal Message must be at most 1,000 characters.")
LINK_EXPIRY_CHOICES = N_("Link Expiry must be 7, 14, 21 or 30 days.")
# A portal's Content, and the most a request carrying it may hold: at most 60,000
# characters are up to 12 bytes each form-encoded or as JSON escapes, so the app's 64 KiB
# turned away German or Japanese pages far inside the limit.
MAX_CONTENT = 60_000
CONTENT_TOO_LONG = N_("The Content is too long: at most 60,000 characters.")
# The portals service's content_too_large: Content whose page would be far larger than
# it is (one link reference used thousands of times).
CONTENT_TOO_LARGE = N_(
    "The Content would make a page too large to show: a link or picture defined once is used"
    " too many times. Use it fewer times, or give it a shorter address."
)
PORTAL_BODY_LIMIT = 1024 * 1024
# A portal's revision is a PostgreSQL integer: a larger one is no revision it can be at.
MAX_REVISION = 2**31 - 1
# The logo as uploaded (the mailer refuses more than 1 MB with its own words), plus the
# form around it.
MAX_LOGO_BYTES = 1024 * 1024
LOGO_FORM_LIMIT = MAX_LOGO_BYTES + 64 * 1024
LOGO_TOO_BIG = N_("The Logo is too big: at most 1024 KB.")
# One answer for an unknown email and a wrong password: no account enumeration.
BAD_LOGIN = N_("The email or password is incorrect.")


def safe_next_path(value: str | None) -> str | None:
    """A local path we may redirect to after login, or None.

    Only a path starting with exactly one '/', with no scheme, no backslash (browsers
    read '/\\evil' as '//evil') and no control characters, so it can't leave the site."""
    if not value or len(value) > 2000:
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    if ":" in value.split("?", 1)[0].split("/", 2)[1]:
        return None
    return value


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def mask_csrf(token: str) -> str:
    """The CSRF token as one page shows it: XORed with a fresh random pad that travels
    with it, so no two pages carry the same bytes and a compressed page can't be
    searched for it by size (BREACH; compression.py). csrf_matches takes it back."""
    raw = token.encode()
    pad = secrets.token_bytes(len(raw))
    return base64.urlsafe_b64encode(
        pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True))
    ).decode()


def _unmask_csrf(submitted: str) -> str | None:
    try:
        both = base64.urlsafe_b64decode(submitted.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    half = len(both) // 2
    if not half or len(both) % 2:
        return None
    pad, masked = both[:half], both[half:]
    return bytes(a ^ b for a, b in zip(pad, masked, strict=True)).decode("latin-1")


def same_text(a: str, b: str) -> bool:
    """``a == b`` in constant time, for any text a request carries: compare_digest takes
    only ASCII str, and a header byte that isn't UTF-8 arrives as a lone surrogate
    (aiohttp's surrogateescape), which plain UTF-8 can't encode."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )


def cookie_token(value: str | None, shortest: int = 1, longest: int = 256) -> str | None:
    """A cookie's value if it could be a token of ours (identity's session tokens, our
    CSRF tokens: printable ASCII of a sane length), else None: a broken or planted cookie
    (a byte that isn't UTF-8, a kilobyte) is as no cookie, never sent on or compared."""
    if value is None or not shortest <= len(value) <= longest:
        return None
    return value if value.isascii() and value.isprintable() else None


def new_send_key() -> str:
    """A form's own id, rendered with it: a post of the same form again (a double click,
    the back button) names the same request (send_key)."""
    return secrets.token_urlsafe(16)


def send_key(form_key: str, scope: str, email: str) -> str | None:
    """The Idempotency-Key of one form's invitation of one address within ``scope`` (a
    portal, a group of portals, a staff role): the same form posted again with another
    address or scope (back, changed) is another invitation. None for a form without its
    key (an older page)."""
    if not form_key:
        return None
    named = f"{form_key}\n{scope}\n{email_key(email)}".encode()
    return "form-" + hashlib.sha256(named).hexdigest()


def csrf_matches(cookie: str | None, submitted: str | None) -> bool:
    """The form's (or X-CSRF-Token's) token is the cookie's: masked (mask_csrf), as pages
    show it, or as it is (a page rendered before the masking)."""
    if not cookie or not submitted:
        return False
    if same_text(cookie, submitted):
        return True
    unmasked = _unmask_csrf(submitted) if submitted.isascii() else None
    return unmasked is not None and same_text(cookie, unmasked)


def origin_allowed(origin: str | None, public_origin: str) -> bool:
    """An Origin header, when the browser sends one, must be our own public origin."""
    if origin is None:
        return True
    return same_text(origin.rstrip("/").lower(), public_origin.lower())


# Integration keys (made by identity) start so; another bearer is not ours to verify.
INTEGRATION_KEY_PREFIX = "cpk_"
KEY_SCOPES = (
    "invitations:write",
    "invitations:read",
    "portals:read",
    "portals:write",
    "users:read",
)


# identity makes keys of 47 ASCII characters and checks none longer than this.
MAX_API_KEY_LENGTH = 1000


def bearer_key(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (the scheme in any case, RFC
    9110 11.1), or None for any other header."""
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def could_be_integration_key(key: str) -> bool:
    """Whether identity could have made ``key``: anything else is refused unasked (a header
    byte that isn't UTF-8 arrives as a lone surrogate, which no JSON can carry)."""
    return (
        key.startswith(INTEGRATION_KEY_PREFIX) and key.isascii() and len(key) <= MAX_API_KEY_LENGTH
    )


def api_key_matches(header: str | None, key: str | None) -> bool:
    presented = bearer_key(header)
    if not key or presented is None:
        return False
    return same_text(presented, key)


PASSWORDS_DIFFER = N_("The passwords do not match.")


def new_password_problem(password: str, confirm: str, email: str) -> tuple[str, str] | None:
    """The first problem with a new password and its confirmation, as (the form field it
    belongs to, its words for the person), or None. The policy is identity's
    (libs/common/passwords.py), checked here too so the form needs no round trip."""
    problem = password_problem(password, email)
    if problem is not None:
        return "password", problem
    if not same_text(password, confirm):
        return "confirm", PASSWORDS_DIFFER
    return None


# --- the client's address, behind trusted proxies --------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(value: str) -> tuple[Network, ...]:
    """``GATEWAY_TRUSTED_PROXIES``: comma-separated CIDRs (a bare address is a /32 or
    /128); ValueError names the first that isn't one."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not an address or CIDR range") from None
    return tuple(networks)


def parse_address(value: str) -> Address | None:
    """One hop of X-Forwarded-For or Forwarded ("1.2.3.4", "1.2.3.4:80", "[::1]:80",
    "2001:db8::1"); None for anything else ("unknown", an obfuscated "_name", junk)."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_hops(values: list[str], header: str) -> list[str]:
    """The hops a header lists, first client first. ``header`` is "x-forwarded-for"
    (``a, b, c``) or "forwarded" (RFC 7239: ``for=a;proto=https, for="[v6]:port"``)."""
    items = [item for value in values for item in value.split(",")]
    if header == "x-forwarded-for":
        return [item.strip() for item in items]
    hops = []
    for element in items:
        node = ""  # an element without for= is a hop we can't read
        for pair in element.split(";"):
            name, _, val = pair.strip().partition("=")
            if name.strip().lower() == "for":
                node = val.strip()
        hops.append(node)
    return hops


def client_address(peer: str | None, hops: list[str], trusted: tuple[Network, ...]) -> str:
    """The address of whoever sent this request: the TCP peer, unless the peer is a
    trusted proxy; then walk the forwarded hops from the right (each proxy appends the
    address it was reached from), skipping trusted proxies, and stop at the first hop that
    isn't one. Hops to its left were written by the client and prove nothing, so a spoofed
    header from anyone else changes nothing."""
    current = parse_address(peer) if peer else None
    if current is None:
        return peer or "unknown"
    remaining = list(hops)
    while remaining and any(current in net for net in trusted):
        hop = parse_address(remaining.pop())
        if hop is None:
            break  # a hop we can't read: the last proxy we trust is all we know
        current = hop
    return str(current)


# IPv6 ranges whose last 32 bits are an IPv4 client's address: NAT64 and SIIT (an
# IPv6-only cluster reached by IPv4 clients), and the old IPv4-compatible form.
_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(net) for net in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")
)


def address_key(address: str) -> str:
    """What per-address limits count on: an IPv6 client usually holds a whole /64, so
    its addresses count as one; but an IPv6 address that carries an IPv4 client's
    (NAT64, SIIT, Teredo, 6to4) counts as that IPv4 client, since a /64 there holds every
    client of the translator or relay (and a 6to4 site's whole /48 is one client's)."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        carried = _carried_ipv4(parsed)
        if carried is not None:
            return str(carried)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.teredo is not None:
        return address.teredo[1]
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _CARRIES_IPV4) and int(address) > 0xFFFF:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


# --- rate-limit windows -----------------------------------------------------------------


def window_start(now: float, window: int) -> int:
    """The fixed window (epoch seconds, a multiple of ``window``) that ``now`` falls in."""
    return int(now // window) * window


def retry_after(limit: int, window: int, elapsed: float, current: int, previous: int) -> int:
    """0 when an attempt is allowed, else the seconds until it would be.

    Two fixed windows approximate a sliding one: the previous window's hits count in
    proportion to how much of it still overlaps the last ``window`` seconds. ``current``
    includes the attempt being judged; ``elapsed`` is how far into its window we are."""
    if previous * (window - elapsed) / window + current <= limit:
        return 0
    if current > limit:
        # Not before the next window; there, these hits are the previous window's.
        fraction = 1 - (limit - 1) / current
        wait = (window - elapsed) + window * fraction
    else:
        fraction = 1 - (limit - current) / previous
        wait = window * fraction - elapsed
    return max(1, math.ceil(wait))


FLASH_MESSAGES: dict[str, str] = {
    "portal_saved": N_("Portal saved."),
    "portal_created": N_("Portal created."),
    "invitation_sent": N_("Invitation sent to {email}"),
    "invitation_resent_pending": (
        N_("An invitation was already pending for {email}; it has been resent.")
    ),
    "invitation_resent": N_("Invitation resent to {email}"),
    "invitation_revoked": N_("Invitation to {email} revoked."),
    "settings_saved": N_("Settings saved."),
    "webhook_deleted": N_("Webhook endpoint deleted."),
    "webhook_redelivered": N_("Delivery queued again."),
    "user_disabled": N_("User {email} disabled."),
    "user_erased": N_("User {email} erased: their account and personal data are gone."),
    "user_gone": N_("This user no longer exists: they were erased already."),
    "key_revoked": N_("API key {email} revoked."),
    "user_enabled": N_("User {email} enabled: they can log in again."),
    "role_changed": N_("The role of {email} was changed."),
    "password_set": N_("Your password has been set. You can log in now."),
    "logged_out": N_("You have been logged out."),
    "bulk_none": N_("Select at least one invitation first."),
    "branding_saved": N_("Branding saved."),
    "logo_uploaded": N_("Logo uploaded."),
    "logo_removed": N_("Logo removed."),
    # {email} is the role's name here (Staff, Administrator).
    "staff_joined": N_("Invitation accepted: you are {email} now."),
    "staff_role_kept": (
        N_("Invitation accepted. You are already an {email}, and you keep that role.")
    ),
    "invitation_sent_portals": N_(
        "Invitation sent to {email}: one email for the portals you ticked."
    ),
    "invite_none": N_("Tick at least one portal first, then Invite Client."),
    "invite_too_many": N_("Tick at most 20 portals for one invitation."),
    "account_saved": N_("Your Language and Time Zone are saved."),
}


def flash_text(key: str, email: str = "") -> str | None:
    if key == BULK_FLASH:
        return bulk_text(email)
    template = FLASH_MESSAGES.get(key)
    if key in ("staff_joined", "staff_role_kept"):
        email = gettext(email)  # a role's name (Staff, Administrator)
    return gettext(template).format(email=email) if template is not None else None


# --- Resend / Revoke for the selected invitations ---------------------------------------
BULK_FLASH = "bulk"
BULK_VERBS = {"resend": "resent", "revoke": "revoked"}
BULK_REASONS = {
    "invitation_accepted": "already accepted",
    "invitation_revoked": "revoked",
    "invitation_pending": "a newer invitation to the same person is pending",
    "invitation_not_found": "no longer exists",
    "portal_not_active": "its portal isn't Active",
    "unavailable": "the service didn't answer; try again",
}
BULK_EMAILS_SHOWN = 3


def bulk_payload(action: str, done: int, failed: dict[str, list[str | None]]) -> str:
    """What the flash cookie carries: counts and reason codes (words are made on reading),
    and the first few addresses per reason (None: one we couldn't look up)."""
    refused = [
        [code, len(emails), [e for e in emails if e][:BULK_EMAILS_SHOWN]]
        for code, emails in failed.items()
    ]
    return json.dumps({"a": action, "ok": done, "no": refused}, separators=(",", ":"))


def bulk_text(payload: str) -> str | None:
    """ "3 resent; 1 could not be resent: already accepted (ann@example.com)"."""
    try:
        data = json.loads(payload)
        verb = BULK_VERBS[data["a"]]
        parts = [f"{int(data['ok'])} {verb}"]
        for code, count, emails in data["no"]:
            reason = BULK_REASONS.get(str(code), "refused")
            shown = [str(e) for e in emails][:BULK_EMAILS_SHOWN]
            who = ", ".join(shown) + (
                f" and {int(count) - len(shown)} more" if count > len(shown) else ""
            )
            parts.append(
                f"{int(count)} could not be {verb}: {reason}" + (f" ({who})" if who else "")
            )
    except (ValueError, KeyError, TypeError, OverflowError):  # a cookie anyone can forge
        return None
    return "; ".join(parts)


def parse_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


# --- Settings → Branding on pages --------------------------------------------------------
PRODUCT_NAME = "ClientPress"


def page_brand(branding: BrandingAnswer) -> dict[str, object]:
    """What base.html shows: the Agency Name (else the product's), the logo's versioned
    URL, the footer, and the stylesheet that carries the accent (the CSP allows no inline
    style, so the colour reaches the page as CSS the gateway serves)."""
    accent = str(branding.get("accent_colour") or "")
    etag = str(branding.get("logo_etag") or "")
    return {
        "name": str(branding.get("agency_name") or "") or PRODUCT_NAME,
        "logo_url": f"/branding/logo?v={etag}" if etag else "",
        "footer_text": str(branding.get("footer_text") or ""),
        "theme_url": f"/branding/theme.css?v={theme_version(accent)}" if accent else "",
    }


# app.css's --bg: the darkest background the pages write links on (main around the cards).
PAGE_BACKGROUND = "#f0f0f1"


def theme_css(accent: str) -> str:
    # The mailer only keeps #rrggbb; checked again, as this goes into a stylesheet.
    if not re.fullmatch(r"#[0-9a-f]{6}", accent):
        return "/* The built-in accent (app.css). */\n"
    # The mailer vouches for white text on the accent (4.5:1); links in it on the grey
    # page background need a shade darker when the accent is near that limit.
    link = readable_on(accent, PAGE_BACKGROUND)
    return f":root {{ --accent: {accent}; --accent-dark: {darker(accent)}; --link: {link}; }}\n"


def theme_version(accent: str) -> str:
    """What the stylesheet's address says (and its ETag): its content's hash, so a browser
    keeping it for a year takes a new one when the accent, or how it is applied, changes."""
    return hashlib.sha256(theme_css(accent).encode()).hexdigest()[:32]


def repeated(values: Iterable[Hashable]) -> frozenset[Hashable]:
    """The values that occur more than once (the ``repeated`` template filter: a title two
    portals of a list share), counted in one pass: ``list.count`` for each of an
    administrator's thousands of portals was quadratic."""
    return frozenset(value for value, n in Counter(values).items() if n > 1)
