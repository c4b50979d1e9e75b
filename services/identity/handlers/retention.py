"""What identity forgets: sessions and password-reset links some time after they ended
(``IDENTITY_RETENTION_DAYS``), so a year of log ins leaves no year of sessions behind, and
the Activity log's old entries if the operator sets ``IDENTITY_ACTIVITY_RETENTION_DAYS``."""

from __future__ import annotations

from datetime import timedelta

from .. import activity_repository
from .. import repository as repo
from .base import Deps


async def prune_ended(
    deps: Deps, retention: timedelta, activity_retention: timedelta | None = None
) -> dict[str, int]:
    """Delete what ended more than ``retention`` ago, and Activity entries older than
    ``activity_retention`` (None: kept for good); answers the rows gone per table."""
    now = deps.clock()
    pruned = {
        "sessions": await repo.prune_sessions(deps.db, now - retention, deps.sessions.idle),
        "password_resets": await repo.prune_resets(deps.db, now - retention),
    }
    if activity_retention is not None:
        pruned["activity"] = await activity_repository.prune(deps.db, now - activity_retention)
    return pruned
