"""This replica's copy of the branding, for the senders: read from the database at most
every MAILER_BRANDING_CACHE_SECONDS, and forgotten at once when this replica saves a
change. Every replica reads the same row, so a change needs no restart anywhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..handlers import Deps
from . import handlers
from .domain import Branding


class BrandingSource:
    def __init__(
        self,
        deps: Deps,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deps = deps
        self.ttl = ttl_seconds
        self.clock = clock
        self._kept: tuple[Branding, float] | None = None

    async def get(self) -> Branding:
        now = self.clock()
        if self._kept is not None and self._kept[1] > now:
            return self._kept[0]
        branding = await handlers.current(self.deps)
        if self.ttl > 0:
            self._kept = (branding, now + self.ttl)
        return branding

    def forget(self) -> None:
        self._kept = None
