"""The cap on invitations one API key sends in any hour (INVITATIONS_REQUESTS_PER_KEY_HOUR),
counted as an integration's invitation.requested are (sender_counts): a leaked or
looping key gets 429 integration_rate_limited beyond it, and the log and
clientpress_invitation_requests_capped_total name it. Staff working in the browser are
not capped here (their caps are per address and per invitation). Requests under way
together don't see each other's count: they may pass the cap by what they hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from libs.common.actor import current_actor
from libs.common.db import Db
from libs.common.errors import RateLimited

from .. import domain
from .. import repository as repo
from ..metrics import REQUESTS_CAPPED
from .base import Deps, log


@dataclass
class KeyAllowance:
    """How many invitations the request's key may still send this hour; ``None`` as
    ``left``: no cap (a person's session, or the cap off)."""

    deps: Deps
    sender: str = ""
    name: str = ""
    left: int | None = None
    now: datetime | None = None
    _refusal: RateLimited | None = field(default=None, repr=False)

    def granted(self, wanted: int) -> int:
        return wanted if self.left is None else max(0, min(wanted, self.left))

    async def refusal(self) -> RateLimited:
        """The answer to what is past the cap (built once a request, counted once)."""
        if self._refusal is None:
            cap = self.deps.settings.invitations_requests_per_key_hour
            assert self.now is not None
            until = await sender_fits_at(self.deps.db, self.sender, self.now, cap)
            REQUESTS_CAPPED.labels(self.sender).inc()
            log.warning(
                "invitation_key_capped",
                key_id=self.sender.removeprefix("key:"),
                key_name=self.name,
                cap=cap,
                retry_at=until.isoformat(),
            )
            self._refusal = domain.key_limited(self.name, until, self.now, limit=cap)
        return self._refusal

    async def check_one(self, key: str | None = None) -> None:
        """Refuse a request that would send one invitation (or one group's email) past the
        cap; a retry of a request whose idempotency ``key`` made something sends nothing,
        so it is answered as the first time, cap or not."""
        if self.granted(1) >= 1:
            return
        if key is not None and (
            await repo.single_key_taken(self.deps.db, key)
            or await repo.group_key_taken(self.deps.db, key)
        ):
            return
        raise await self.refusal()

    async def spend(self, sent: int) -> None:
        """Count what the request sent (nothing for a replayed key)."""
        if self.left is None or sent <= 0:
            return
        assert self.now is not None
        self.left -= sent
        await repo.record_sender_requests(self.deps.db, [(self.sender, self.now)] * sent)


async def sender_fits_at(db: Db, sender: str, now: datetime, cap: int) -> datetime:
    """When a sender (an integration's broker user, ``key:<id>``) past its cap may send
    again: once the minute that filled its cap leaves the hour."""
    full = await repo.sender_full_minute(db, sender, domain.sender_window(now), cap)
    return now if full is None else max(now, full + domain.SENDER_WINDOW)


async def key_allowance(deps: Deps) -> KeyAllowance:
    """The allowance of the API key behind this request (bound by the gateway)."""
    actor = current_actor()
    cap = deps.settings.invitations_requests_per_key_hour
    if actor is None or actor.type != "key" or not cap:
        return KeyAllowance(deps)
    sender, now = f"key:{actor.id}", deps.clock()
    taken = await repo.senders_taken(deps.db, [sender], domain.sender_window(now))
    return KeyAllowance(deps, sender, actor.name, cap - taken.get(sender, 0), now)
