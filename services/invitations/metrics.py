"""The invitations service's Prometheus metrics: invitations by (effective) status, kept
fresh by a background task the app owns, with one GROUP BY query per round.

Every replica reports the same totals (they come from the shared table): aggregate them
with max(), not sum()."""

from __future__ import annotations

from datetime import datetime
from typing import get_args

import asyncpg
from prometheus_client import Counter, Gauge

from libs.common.logging import get_logger

from . import repository as repo
from .domain import Status

log = get_logger(__name__)

REFRESH_SECONDS = 15.0

INVITATIONS = Gauge("clientpress_invitations", "Invitations by status", ["status"])
# Per replica (sum them): what each served Email me a new link request came to (sent,
# daily_limit, send_rate_limited, portal_not_active, invitation_revoked, …), reminders
# sent or deferred by the caps, and new links the caps refused, by which cap.
NEW_LINK_REQUESTS = Counter(
    "clientpress_invitation_new_link_requests_total",
    "Email me a new link requests served, by outcome",
    ["outcome"],
)
REMINDERS = Counter(
    "clientpress_invitation_reminders_total", "Invitation reminders, by result", ["result"]
)
SENDS_CAPPED = Counter(
    "clientpress_invitation_sends_capped_total",
    "New links refused by the caps on new links, by cap",
    ["cap"],
)

# Per replica (sum them): invitation.requested refused by the cap on requests per
# integration, by the broker user that sent them ('unnamed' without a user_id).
REQUESTS_CAPPED = Counter(
    "clientpress_invitation_requests_capped_total",
    "Invitation requests refused by the cap per integration (a broker user, or key:<id> for"
    " an API key), by sender",
    ["sender"],
)


async def refresh(pool: asyncpg.Pool, now: datetime) -> None:
    async with pool.acquire() as conn:
        counts = await repo.counts_by_status(conn, now)
    for status in get_args(Status):
        INVITATIONS.labels(status).set(counts.get(status, 0))
