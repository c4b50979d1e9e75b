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

# A pending invitation past its expiry counts as expired, as the list shows it.
_COUNTS = (
    "SELECT CASE WHEN status = 'pending' AND expires_at <= $1 THEN 'expired' ELSE status END"
    " AS status, count(*) AS n FROM invitations GROUP BY 1"
)


async def refresh(pool: asyncpg.Pool, now: datetime) -> None:
    counts = {row["status"]: int(row["n"]) for row in await pool.fetch(_COUNTS, now)}
    for status in get_args(Status):
        INVITATIONS.labels(status).set(counts.get(status, 0))
