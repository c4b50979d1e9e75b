"""Invitation rules: expiry, the status machine, tokens, email addresses. No I/O."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from libs.common import text
from libs.common.errors import Conflict, Gone, InvalidInput, RateLimited
from libs.common.events import ROLE_RANK

Clock = Callable[[], datetime]
Status = Literal["pending", "accepted", "revoked", "expired"]

# How long one request may drive an acceptance before the same link may take it over (in
# the link's life) and the sweep may hand it back: far longer than the saga (a few
# internal calls and one argon2 hash), short enough that a person retrying after a crash
# isn't kept waiting long. The holder finishes in its lease even past the link's end: the
# link was spent in time.
ACCEPT_LEASE = timedelta(seconds=60)
# How long after its lease an acceptance that no one finished waits for its link before the
# sweep hands it back (pending): a person who got an error page retries within minutes, and
# their retry finishes through the set-password form. Once handed back, the page asks them
# to log in if the failed try made their account.
ACCEPT_RETRY_WINDOW = timedelta(minutes=10)

EXPIRY_CHOICES = (7, 14, 21, 30)
DEFAULT_EXPIRY_DAYS = 14
MAX_TOKEN_LENGTH = 200
MAX_MESSAGE_LENGTH = 1000
MAX_NAME_LENGTH = 200
# What an erased person's invitations say instead of their address (handlers/erasure.py):
# a reserved domain (RFC 2606), so nothing is ever sent to it.
ERASED_EMAIL = "erased@erased.invalid"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- expiry ---------------------------------------------------------------------------
def check_expiry_days(days: int) -> int:
    if days not in EXPIRY_CHOICES:
        raise InvalidInput(
            "Invitation Link Expiry must be 7, 14, 21 or 30 days.", code="invalid_expiry_days"
        )
    return days


def check_link_expiry(days: int) -> int:
    """A Link Expiry chosen for one invitation: one of the setting's choices."""
    if days not in EXPIRY_CHOICES:
        raise InvalidInput(
            "Link Expiry (expires_in_days) must be 7, 14, 21 or 30 days.",
            code="invalid_expires_in_days",
        )
    return days


def expiry_for(sent_at: datetime, days: int) -> datetime:
    """The link's end, fixed when it is sent: a later settings change doesn't move it."""
    return sent_at + timedelta(days=check_expiry_days(days))


def effective_status(status: str, expires_at: datetime, now: datetime) -> Status:
    """A pending invitation past its expiry is expired, even before the sweep marks it. An
    acceptance under way ('accepting') shows as accepted: its link is spent, and only
    that link can finish it."""
    if status == "pending" and now >= expires_at:
        return "expired"
    if status == "accepting":
        return "accepted"
    if status not in ("pending", "accepted", "revoked", "expired"):
        raise ValueError(f"unknown invitation status {status!r}")
    return status  # type: ignore[return-value]


# --- transitions ----------------------------------------------------------------------
def check_token_usable(status: str, expires_at: datetime, now: datetime) -> None:
    """Why a link can't be used (validate); returns when it is still good. An acceptance
    under way is good in the link's life: the same link, sent again, finishes it. After,
    it is expired like any link (a link found in a mailbox months later sets nothing)."""
    if status == "accepting":
        if now < expires_at:
            return
        status = "pending"  # as the link it was: expired
    current = effective_status(status, expires_at, now)
    if current == "accepted":
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    if current == "revoked":
        raise Gone("This invitation has been revoked.", code="invitation_revoked")
    if current == "expired":
        raise Gone(
            f"This invitation link expired at {when(expires_at)}.",
            code="invitation_expired",
            details={"expired_at": expires_at.isoformat()},
        )


def check_earlier_link(status: str) -> None:
    """Why a link that a newer one replaced can't be used: always raises. What became of
    the invitation comes first (accepted: log in; revoked: withdrawn); otherwise the link
    was replaced, and the newest email has the one that works."""
    if status in ("accepting", "accepted"):
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    if status == "revoked":
        raise Gone("This invitation has been revoked.", code="invitation_revoked")
    raise Gone(
        "This link was replaced by a newer one; use the latest email we sent.",
        code="invitation_replaced",
    )


def check_reservable(
    status: str, expires_at: datetime, claim_until: datetime | None, now: datetime
) -> None:
    """Why an acceptance can't start (or take over); returns when it can: a pending link
    in time, or an acceptance whose driver has gone quiet (its lease is over) while the
    link is in time."""
    if status == "accepting" and claim_until is not None and now < claim_until:
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    check_token_usable(status, expires_at, now)


def stalled_acceptance_becomes(
    status: str, expires_at: datetime, claim_until: datetime | None, now: datetime
) -> Literal["pending", "expired"] | None:
    """What the sweep makes of an acceptance whose lease is over (its holder died, or gave
    up after identity's answer timed out, before it could hand it back): nothing was
    accepted, so the client has no access. Past the link's end it is expired; in the
    link's life, once ACCEPT_RETRY_WINDOW has passed without a retry, it is pending again
    (the same link or a Resend finishes it, staff can Revoke it). Never accepted: only a
    holder with its claim, who knows the account, accepts. None: not (yet) for the sweep."""
    if status != "accepting" or claim_until is None or now < claim_until:
        return None
    if now >= expires_at:
        return "expired"
    if now >= claim_until + ACCEPT_RETRY_WINDOW:
        return "pending"
    return None


def check_can_resend(status: str) -> None:
    """Resend works on pending and expired invitations; nothing leaves accepting/accepted/
    revoked."""
    if status in ("accepting", "accepted"):
        raise Conflict("This invitation has already been accepted.", code="invitation_accepted")
    if status == "revoked":
        raise Conflict(
            "This invitation has been revoked; send a new invitation instead.",
            code="invitation_revoked",
        )


def must_revoke(status: str) -> bool:
    """True when revoking changes something; False when it is already revoked. An acceptance
    under way has spent the link: the revoke comes too late, as for an accepted one."""
    if status in ("accepting", "accepted"):
        raise Conflict(
            "This invitation has already been accepted and can't be revoked.",
            code="invitation_accepted",
        )
    return status != "revoked"


def check_portal_takes_acceptance(portal_id: object, portal_status: str | None) -> None:
    """One portal's link is accepted only while its portal is Active, as a link for several
    takes only its Active portals: until then the invitation stays pending (nothing is
    made), and the same link takes it once the portal is Active again. A staff
    invitation has no portal."""
    if portal_id is not None and portal_status != "active":
        raise Conflict(
            "The portal of this invitation isn't available at the moment. Ask the person who"
            " invited you.",
            code="portal_not_active",
            details={"portal_count": 1},
        )


def check_portal_active_for_resend(status: str, title: str | None) -> None:
    """A new link for a portal that isn't Active would lead nowhere: refused, saying so."""
    if status != "active":
        raise Conflict(
            f"The portal {title or ''!r} is {status.capitalize()}: its invitations can't be"
            " resent. Make the portal Active first.",
            code="portal_not_active",
        )


# --- caps on new links ----------------------------------------------------------------
SEND_WINDOW = timedelta(hours=1)
NEW_LINK_WINDOW = timedelta(days=1)


def next_send_at(
    sent: Iterable[datetime], limit: int, window: timedelta, now: datetime
) -> datetime | None:
    """None when one more send fits under ``limit`` sends in any ``window`` (sliding);
    otherwise the moment it will: when enough of the recent sends have left the window."""
    recent = sorted(t for t in sent if t > now - window)
    if len(recent) < limit:
        return None
    return recent[len(recent) - limit] + window


def when(moment: datetime) -> str:
    """A moment for people: "2026-11-25 14:05 UTC"."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def send_limited(
    until: datetime, now: datetime, *, limit: int, email: str | None = None
) -> RateLimited:
    """The refusal of a new link beyond a cap: 429, with when the next one can go (the
    minute shown is rounded up, so trying at that minute works)."""
    shown = _minute_up(until)
    if email is None:
        times = "once" if limit == 1 else f"{limit} times"
        message = (
            f"This invitation has been emailed {times} in the last hour."
            f" The next email can go at {when(shown)}."
        )
    else:
        links = "1 new invitation link" if limit == 1 else f"{limit} new invitation links"
        message = (
            f"{email} has been sent {links} in the last hour. The next one can go at {when(shown)}."
        )
    return _limited(message, until, now, "send_rate_limited")


def _minute_up(moment: datetime) -> datetime:
    """The minute to show for ``moment``, rounded up: trying at that minute works."""
    shown = moment.replace(second=0, microsecond=0)
    return shown + timedelta(minutes=1) if shown < moment else shown


def _limited(message: str, until: datetime, now: datetime, code: str) -> RateLimited:
    """429 with ``message``, and when the next one fits (``retry_at``, ``retry_after``)."""
    wait = max(1, math.ceil((until - now).total_seconds()))
    return RateLimited(
        message,
        retry_after=wait,
        code=code,
        details={"retry_at": until.isoformat(), "retry_after": wait},
    )


SENDER_WINDOW = timedelta(hours=1)


def sender_window(now: datetime) -> datetime:
    """The minute after which an integration's or key's counted minutes are in the cap's
    hour: the current minute and the hour's whole minutes before it. A counted minute
    leaves the window SENDER_WINDOW after it began."""
    return now.replace(second=0, microsecond=0) - SENDER_WINDOW


def sender_limited(
    sender: str | None, until: datetime, now: datetime, *, limit: int
) -> RateLimited:
    """The refusal of an invitation.requested beyond the cap on requests per integration
    (its broker user) in any hour: nothing is made or sent; ``retry_at`` says when the
    next one fits."""
    who = f"The integration {sender}" if sender else "An integration without a user_id"
    requests = "1 invitation request" if limit == 1 else f"{limit} invitation requests"
    setting = "INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR"
    return _integration_limited(f"{who} has sent {requests}", setting, until, now)


def key_limited(name: str, until: datetime, now: datetime, *, limit: int) -> RateLimited:
    """The refusal of an invitation sent with an API key beyond the cap on invitations per
    key in any hour (the same ``integration_rate_limited`` as an integration on the
    broker): nothing is sent; ``retry_at`` says when the next one fits."""
    invitations = "1 invitation" if limit == 1 else f"{limit:,} invitations"
    sent = f"The API key {name!r} has sent {invitations}"
    return _integration_limited(sent, "INVITATIONS_REQUESTS_PER_KEY_HOUR", until, now)


def _integration_limited(sent: str, setting: str, until: datetime, now: datetime) -> RateLimited:
    """429 integration_rate_limited: what was ``sent`` in the hour, the ``setting`` that
    caps it, and when the next one can go (the minute shown rounded up)."""
    message = (
        f"{sent} in the last hour, its cap ({setting}). Nothing was sent."
        f" The next one can go at {when(_minute_up(until))}."
    )
    return _limited(message, until, now, "integration_rate_limited")


# --- reminders ------------------------------------------------------------------------
REMINDER_CHOICES = (0, 1, 3)  # days before expiry; 0 = Off


def check_reminder_days(days: int) -> int:
    if days not in REMINDER_CHOICES:
        raise InvalidInput(
            "Invitation Reminder must be Off (0), 1 or 3 days before expiry.",
            code="invalid_reminder_days",
        )
    return days


def reminder_due(
    status: str, expires_at: datetime, reminded_at: datetime | None, days: int, now: datetime
) -> bool:
    """A pending invitation gets its one reminder from ``days`` before its expiry until it
    expires (the sweep's SQL says the same)."""
    return (
        days > 0
        and status == "pending"
        and reminded_at is None
        and expires_at - timedelta(days=days) <= now < expires_at
    )


# --- tokens ---------------------------------------------------------------------------
def new_token() -> tuple[str, str]:
    """A one-time link token and the sha256 hex that is the only thing we store."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- names -----------------------------------------------------------------------------
def one_line(raw: str | None) -> str | None:
    """A name for one line of an email or a screen (libs/common/text.py): invisible
    characters dropped, each run of spaces, line breaks and controls one space; empty means
    none. Not yet checked: :func:`check_inviter` and :func:`clean_name` refuse what would
    reorder the sentence around it."""
    if raw is None:
        return None
    return text.one_line(raw) or None


def check_inviter(invited_by: str | None) -> str | None:
    """Who invited, the subject of the email's first sentence and its From line's
    neighbour: one line that can't reorder the words around it."""
    if invited_by is None:
        return None
    return text.clean_line(invited_by, "The inviter's name (invited_by)", "invited_by") or None


def clean_name(raw: str | None) -> str | None:
    """The invitee's display name for the greeting: one line, at most 200 characters;
    empty means none."""
    name = "" if raw is None else text.clean_line(raw, "The name", "name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"The name must be at most {MAX_NAME_LENGTH} characters.", code="name_too_long"
        )
    return name or None


# --- personal message -----------------------------------------------------------------
def clean_personal_message(raw: str | None) -> str | None:
    """Plain text, at most 1,000 characters; empty means none. Line breaks stay; other
    control characters (which no one types and some mail clients choke on) and invisible
    ones go; a change of direction must be closed on its line (libs/common/text.py)."""
    if raw is None:
        return None
    message = text.clean_text(raw, "The Personal Message", "personal_message")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise InvalidInput(
            f"The Personal Message must be at most 1,000 characters (it has {len(message):,}).",
            code="personal_message_too_long",
        )
    return message or None


# --- the mail job ---------------------------------------------------------------------
def accept_url(public_base: str, token: str) -> str:
    return f"{public_base}/invitations/accept?token={token}"


def site_name(public_base: str) -> str:
    return urlsplit(public_base).hostname or public_base


def token_hash_or_none(token: str) -> str | None:
    """The hash of something that may be a link's token; None when it can't be one."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return hash_token(token)


def mail_context(
    *,
    public_base: str,
    token: str,
    portal_title: str,
    expires_at: datetime,
    invited_by: str | None,
    expires_in_days: int | None = None,
    personal_message: str | None = None,
    invitee_name: str | None = None,
    portal_titles: Sequence[str] = (),
    has_account: bool = False,
) -> dict[str, str]:
    """``portal_titles``: the portals of one email sent for several invitations (a
    group's link). ``portal_title`` then names them all in words, so a mailer that knows
    only one portal still writes a true sentence. ``has_account``: the address already
    has an account, so the link will ask the person to log in, not to set a password."""
    if len(portal_titles) > 1:
        portal_title = titles_in_words(portal_titles)
    context = {
        "accept_url": accept_url(public_base, token),
        "portal_title": portal_title,
        "site_name": site_name(public_base),
        "expires_at": expires_at.isoformat(),
        "invited_by": invited_by or "",
    }
    if expires_in_days is not None:
        context["expires_in_days"] = str(expires_in_days)
    if personal_message:
        context["personal_message"] = personal_message
    if invitee_name:
        context["invitee_name"] = invitee_name
    if len(portal_titles) > 1:
        context["portal_titles"] = json.dumps(list(portal_titles))
    if has_account:
        context["has_account"] = "1"
    return context


def check_portal_accepts(status: str) -> None:
    if status != "active":
        raise Conflict(
            f"This portal is {status}; only Active portals take invitations.",
            code="portal_not_active",
        )


# --- staff invitations (Users → Invite Staff) -------------------------------------------
STAFF_ROLES = ("administrator", "staff")
ROLE_NAMES = {"administrator": "Administrator", "staff": "Staff", "client": "Client"}


def check_staff_role(role: str) -> str:
    if role not in STAFF_ROLES:
        raise InvalidInput("Choose a role: Administrator or Staff.", code="invalid_role")
    return role


# Who may send a staff invitation (the gateway's Users screen and /api/v1/staff-invitations
# answer Administrators only). A sender who no longer is one, or whose account is disabled
# or gone, can't send them any more: their open ones are revoked.
SENDS_STAFF_INVITATIONS = frozenset({"administrator"})


def may_send_staff_invitations(role: str, *, disabled: bool = False) -> bool:
    return role in SENDS_STAFF_INVITATIONS and not disabled


def check_not_on_the_team(email: str, role: str, disabled: bool, invited: str) -> None:
    """A staff invitation is for someone who isn't already at least the invited role.
    A Client (or a stranger) is invited alike, so the answer says nothing about clients."""
    if ROLE_RANK.get(role, 0) < ROLE_RANK[invited]:
        return
    if disabled:
        raise Conflict(
            f"{email} has a disabled {ROLE_NAMES[role]} account: Enable it instead.",
            code="account_disabled",
        )
    article = "an" if role == "administrator" else "a"
    raise Conflict(
        f"{email} already has {article} {ROLE_NAMES[role]} account; no invitation is needed.",
        code="already_on_team",
    )


def staff_mail_context(
    *,
    public_base: str,
    token: str,
    role: str,
    expires_at: datetime,
    invited_by: str | None,
    expires_in_days: int | None,
) -> dict[str, str]:
    context = {
        "accept_url": accept_url(public_base, token),
        "site_name": site_name(public_base),
        "role_name": ROLE_NAMES[role],
        "expires_at": expires_at.isoformat(),
        "invited_by": invited_by or "",
    }
    if expires_in_days is not None:
        context["expires_in_days"] = str(expires_in_days)
    return context


# --- several portals, one invitation ----------------------------------------------------
MAX_GROUP_PORTALS = 20


def check_portal_ids(portal_ids: Sequence[object]) -> None:
    """One invitation to several portals: 1 to 20 portals, each once."""
    if not portal_ids:
        raise InvalidInput("Choose at least one portal.", code="no_portals")
    if len(portal_ids) > MAX_GROUP_PORTALS:
        raise InvalidInput(
            f"One invitation takes at most {MAX_GROUP_PORTALS} portals"
            f" ({len(portal_ids)} were given).",
            code="too_many_portals",
        )
    seen: set[object] = set()
    for portal_id in portal_ids:
        if portal_id in seen:
            raise InvalidInput(
                f"The portal {portal_id} is listed twice; list each portal once.",
                code="duplicate_portal",
                details={"portal_id": str(portal_id)},
            )
        seen.add(portal_id)


def portal_names(titles: Sequence[str]) -> str:
    """'Acme', 'Acme and Beta', 'Acme, Beta and Gamma': the portals in a sentence."""
    quoted = [f"'{title}'" for title in titles]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def titles_in_words(titles: Sequence[str]) -> str:
    """The portals of one email as a title: 'Acme, Beta and Gamma'."""
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


@dataclass(frozen=True)
class LinkRow:
    """What the rules need of one invitation a group's link was sent for."""

    status: str
    expires_at: datetime
    claim_until: datetime | None
    portal_active: bool


def acceptable_in_group(rows: Sequence[LinkRow], now: datetime) -> list[int]:
    """Which of a group's invitations one acceptance of their link takes (their positions):
    each pending one, in time, whose portal is still Active, and any acceptance under way
    whose driver went quiet. Raises why nothing can be taken: another request is driving
    the acceptance or it is done (used), no portal is Active any more (portal_not_active),
    or what became of them (expired, revoked). A revoked invitation or an Archived portal
    never blocks the others."""
    if any(
        r.status == "accepting" and (r.claim_until is None or now < r.claim_until) for r in rows
    ):
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    taken = [
        n
        for n, r in enumerate(rows)
        if (r.status == "accepting" and now < r.expires_at)
        or (r.status == "pending" and now < r.expires_at and r.portal_active)
    ]
    if taken:
        return taken
    statuses = {_link_status(r, now) for r in rows}
    if "accepted" in statuses:
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    if "pending" in statuses:
        raise Conflict(
            "The portals of this invitation aren't available at the moment. Ask the person"
            " who invited you.",
            code="portal_not_active",
        )
    if "expired" in statuses:
        last = max(r.expires_at for r in rows if _link_status(r, now) == "expired")
        check_token_usable("pending", last, now)
    raise Gone("This invitation has been revoked.", code="invitation_revoked")


def _link_status(row: LinkRow, now: datetime) -> Status:
    """What a group's invitation is to its link: an acceptance under way whose lease and
    link are over is expired (nothing takes it any more), not used."""
    if row.status == "accepting" and now >= row.expires_at:
        return "expired"
    return effective_status(row.status, row.expires_at, now)


def usable_in_group(rows: Sequence[LinkRow], now: datetime) -> list[int]:
    """What validating a group's link shows: the invitations an acceptance would take,
    or, while one is under way in the link's life (only its own link can finish it),
    those it holds."""
    holding = [n for n, r in enumerate(rows) if r.status == "accepting" and now < r.expires_at]
    if holding:
        return holding
    return acceptable_in_group(rows, now)


def earlier_group_link(statuses: Iterable[str]) -> None:
    """Why a group's link that newer ones replaced can't be used: always raises. While
    any of its invitations is still open, the newest email has the link that works;
    otherwise what became of them (used, revoked)."""
    found = set(statuses)
    if found & {"pending", "expired"}:
        check_earlier_link("pending")
    if found & {"accepting", "accepted"}:
        check_earlier_link("accepted")
    check_earlier_link("revoked")
