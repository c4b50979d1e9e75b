"""What identity forgets: sessions and password-reset links some time after they ended
(``IDENTITY_RETENTION_DAYS``), so a year of log ins leaves no year of sessions behind."""

from __future__ import annotations

from datetime import timedelta

from .. import repository as repo
from .base import Deps


async def prune_ended(deps: Deps, retention: timedelta) -> dict[str, int]:
    """Delete what ended more than ``retention`` ago; answers the rows gone per table."""
    before = deps.clock() - retention
    return {
        "sessions": await repo.prune_sessions(deps.db, before, deps.sessions.idle),
        "password_resets": await repo.prune_resets(deps.db, before),
    }
