"""Email me a new link: the button on the page of an expired or replaced link.

The request is written down and answered at once, before anything about the invitation
is read, so the page (and how long it takes) is the same whatever happens next: sent,
refused by a limit, the portal no longer Active, the invitation revoked or accepted
meanwhile, or a link we never sent. A worker then serves the request: a fresh link goes
to the address the invitation was sent to (never one the requester typed), only while
the invitation is neither revoked nor accepted and its portal is Active, at most
``INVITATIONS_NEW_LINK_REQUESTS_PER_DAY`` times a day per invitation and within the caps
on new links (sends.py). ``invitation.resent`` says ``reason: requested_by_invitee``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

import asyncpg
from aiohttp import web

from libs.common.context import new_id, set_correlation_id
from libs.common.db import Conn, transaction
from libs.common.errors import RateLimited

from .. import domain
from .. import repository as repo
from ..metrics import NEW_LINK_REQUESTS
from . import sends
from .base import Deps, log
from .sending import _reissue, account_exists, group_mates

# A request not served within this long (the database away, a bug) is dropped.
STALE_AFTER = timedelta(hours=1)


async def request_new_link(deps: Deps, token: str) -> None:
    """Write the request down; nothing is looked up. Repeats of one link coalesce."""
    token_hash = domain.token_hash_or_none(token)
    if token_hash is not None:
        await repo.add_link_request(deps.db, token_hash, deps.clock())


async def serve_new_link_requests(deps: Deps, *, limit: int = 100) -> int:
    """Serve up to ``limit`` waiting requests, each in its own transaction with the request's
    removal, so each is served once however many replicas work; returns how many."""
    await repo.drop_stale_link_requests(deps.db, deps.clock() - STALE_AFTER)
    served = 0
    while served < limit:
        set_correlation_id(new_id())
        async with transaction(deps.db) as conn:
            request = await repo.take_link_request(conn)
            if request is None:
                break
            outcome = await _serve(conn, deps, request["token_hash"])
        # The outcome is for the logs only: the person was answered before it was known.
        log.info("new_link_request_served", outcome=outcome)
        NEW_LINK_REQUESTS.labels(outcome).inc()
        served += 1
    return served


async def _serve(conn: Conn, deps: Deps, token_hash: str) -> str:
    link = await repo.find_link(conn, token_hash)
    if link is None:
        return "unknown_link"
    if link["group_id"] is not None:
        return await _serve_group(conn, deps, token_hash, link["group_id"])
    row = await repo.get_for_update(conn, link["invitation_id"])
    assert row is not None  # links are never deleted, nor their invitations
    link = await repo.find_link(conn, token_hash)  # again, under the invitation's lock
    assert link is not None
    now = deps.clock()
    status = domain.effective_status(row["status"], row["expires_at"], now)
    if status in ("accepted", "revoked"):
        return f"invitation_{status}"
    if link["current"] and status == "pending":
        return "link_still_works"
    if row["staff_role"] is None:  # a staff invitation has no portal to check
        portal = await repo.get_portal(conn, row["portal_id"])
        if portal is None or portal["status"] != "active":
            return "portal_not_active"
    if not await sends.new_link_requests_left(conn, deps, row["id"]):
        return "daily_limit"
    has_account = await account_exists(deps, row["email"])
    try:
        async with conn.transaction():
            await _reissue(
                conn,
                deps,
                row,
                row["portal_title"],
                reason=sends.REQUESTED_BY_INVITEE,
                has_account=has_account,
            )
    except RateLimited:
        return "send_rate_limited"
    except asyncpg.UniqueViolationError:
        return "newer_invitation_pending"  # a newer invitation of this person is pending
    return "sent"


class NewLinkWorker:
    """Serves the requests: woken by each request this replica takes, and every
    ``every`` seconds for what another (stopped) replica left."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, deps: Deps) -> None:
        while True:
            self._wake.clear()
            try:
                await serve_new_link_requests(deps)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("new_link_requests_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.every)

    def context(
        self, deps: Callable[[web.Application], Deps]
    ) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
        """Runs with the app, on ``deps(app)`` (built once the pool is open)."""

        @contextlib.asynccontextmanager
        async def ctx(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(self.run(deps(app)), name="invitations-new-links")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return ctx


async def _serve_group(conn: Conn, deps: Deps, token_hash: str, group_id: uuid.UUID) -> str:
    """A group's link: a fresh one for the group's invitations that can still take it
    (neither revoked nor accepted, portal Active, requests left today), in one email."""
    sent_for = {link["invitation_id"] for link in await repo.find_links(conn, token_hash)}
    rows = await repo.lock_group(conn, group_id)
    now = deps.clock()
    mine = [r for r in rows if r["id"] in sent_for]
    status = {r["id"]: domain.effective_status(r["status"], r["expires_at"], now) for r in mine}
    still_open = [r for r in mine if status[r["id"]] in ("pending", "expired")]
    if not still_open:
        return "invitation_accepted" if "accepted" in status.values() else "invitation_revoked"
    if any(r["token_hash"] == token_hash and status[r["id"]] == "pending" for r in still_open):
        return "link_still_works"
    active = [r for r in still_open if r["portal_status"] == "active"]
    if not active:
        return "portal_not_active"
    left = [r for r in active if await sends.new_link_requests_left(conn, deps, r["id"])]
    if not left:
        return "daily_limit"
    target = left[0]
    mates = [
        m
        for m in await group_mates(conn, rows, target)
        if await sends.new_link_requests_left(conn, deps, m["id"])
    ]
    has_account = await account_exists(deps, target["email"])
    try:
        async with conn.transaction():
            await _reissue(
                conn,
                deps,
                target,
                target["portal_title"],
                reason=sends.REQUESTED_BY_INVITEE,
                mates=mates,
                has_account=has_account,
            )
    except RateLimited:
        return "send_rate_limited"
    except asyncpg.UniqueViolationError:
        return "newer_invitation_pending"
    return "sent"
