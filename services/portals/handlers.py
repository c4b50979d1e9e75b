"""Use cases: ``use_case(deps, ...)``; each runs in one transaction on ``deps.db`` and
writes its events to the outbox with the change. Access changes to a portal lock its row
first, so they apply one at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg

from libs.common.cursor import page_of
from libs.common.db import Conn, UseCaseDeps, connection, transaction
from libs.common.errors import Conflict, InvalidInput, NotFound
from libs.common.events import PortalAccessChanged, PortalChanged, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append

from . import repository as repo
from .domain import (
    RENDERER,
    ContentTooLarge,
    Portal,
    Role,
    Status,
    first_free_slug,
    may_grant,
    render_content,
    resolve_role,
    sanitise_html,
    slug_candidate,
    slugify,
)
from .settings import PortalsSettings

log = get_logger(__name__)

SOURCE = "portals"
_SLUG_CONSTRAINT = "portals_slug_key"
_SLUG_ATTEMPTS = 20
_SLUG_BATCH = 50


@dataclass(frozen=True)
class Deps(UseCaseDeps):
    """What the use cases need: ``db`` (the pool, or a consumer's connection) and
    ``clock`` from UseCaseDeps, and the settings."""

    settings: PortalsSettings


def _not_found() -> NotFound:
    return NotFound("No such portal.", code="portal_not_found")


def _slug_taken(slug: str) -> Conflict:
    return Conflict(f"The slug '{slug}' is already used by another portal.", code="slug_taken")


async def _unless_slug_taken(conn: Conn, write: Callable[[], Awaitable[None]]) -> bool:
    """One write in a savepoint: False when another portal holds the slug (the caller's
    transaction goes on); any other unique violation is raised."""
    try:
        async with conn.transaction():
            await write()
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != _SLUG_CONSTRAINT:
            raise
        return False
    return True


async def _announce(conn: Conn, event_type: str, portal: Portal) -> None:
    data = PortalChanged(
        portal_id=portal.id,
        slug=portal.slug,
        title=portal.title,
        status=portal.status,
        revision=portal.revision,
    )
    await append(conn, make_event(event_type, data, source=SOURCE))


async def _access_changed(
    conn: Conn,
    granted: bool,
    portal_id: uuid.UUID,
    user_id: uuid.UUID,
    role: Role,
    idempotency_key: str | None = None,
) -> None:
    event_type = "portal.access.granted" if granted else "portal.access.revoked"
    data = PortalAccessChanged(
        portal_id=portal_id, user_id=user_id, role=role, idempotency_key=idempotency_key
    )
    await append(conn, make_event(event_type, data, source=SOURCE))


def _account_closed(user_id: uuid.UUID) -> InvalidInput:
    return InvalidInput(
        f"The user {user_id} is disabled: enable the account first, then invite them.",
        code="user_disabled",
    )


async def _check_open(
    conn: Conn, user_ids: list[uuid.UUID], accepted_at: datetime | None = None
) -> None:
    """Refuse a grant to an account portals heard was disabled or erased (domain.may_grant),
    holding each account's lock until the transaction ends (in one order, so two changes
    never wait on each other): the news of a Disable waits for the grant, then takes it."""
    for user_id in sorted(set(user_ids)):
        await repo.lock_account(conn, user_id)
        if not may_grant(await repo.account(conn, user_id), accepted_at):
            raise _account_closed(user_id)


async def _load(conn: Conn, portal_id: uuid.UUID) -> Portal:
    portal = await repo.get(conn, portal_id)
    if portal is None:
        raise _not_found()
    return portal


# --- portals --------------------------------------------------------------------------
# Rendering is CPU alone, and crafted Content takes markdown-it-py seconds (some unclosed
# brackets make its inline parse quadratic): it runs on a thread of its own, one render at
# a time, before any transaction, so the service goes on answering and no row lock waits.
_RENDERER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")


async def _render(content: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_RENDERER, render_content, content)


# Pages rendered again a few at a time: each one's Content and HTML held at once.
_RERENDER_BATCH = 20


async def rerender_once(deps: Deps) -> int:
    """Render again every page an older renderer wrote (``domain.RENDERER``), so that a fix
    to the rules or the libraries reaches pages saved before it; returns how many. A
    portal saved meanwhile keeps what its save rendered. Content the rules now refuse
    (too large a page) keeps its page, sanitised by today's rules. Several replicas may do
    this at once: each stores the same page."""
    done = 0
    after = uuid.UUID(int=0)
    while True:
        async with connection(deps.db) as conn:
            rows = await repo.rendered_otherwise(conn, RENDERER, after, _RERENDER_BATCH)
        if not rows:
            break
        for row in rows:
            try:
                html = await _render(row["content"])
            except ContentTooLarge:
                html = await asyncio.get_running_loop().run_in_executor(
                    _RENDERER, sanitise_html, row["content_html"]
                )
                log.warning("portal_content_refused_on_rerender", portal_id=str(row["id"]))
            async with connection(deps.db) as conn:
                if await repo.store_rendering(conn, row["id"], row["revision"], html, RENDERER):
                    done += 1
        after = rows[-1]["id"]
    if done:
        log.info("portals_rerendered", count=done, renderer=RENDERER)
    return done


async def create_portal(
    deps: Deps, *, title: str, slug: str | None, content: str, status: Status
) -> Portal:
    portal_id = uuid.uuid4()
    content_html = await _render(content)
    async with transaction(deps.db) as conn:
        insert = partial(
            repo.insert,
            conn,
            portal_id=portal_id,
            title=title,
            content=content,
            content_html=content_html,
            rendered_with=RENDERER,
            status=status,
        )
        if slug is not None:
            if not await _unless_slug_taken(conn, partial(insert, slug=slug)):
                raise _slug_taken(slug)
        else:
            await _insert_with_generated_slug(conn, insert, slugify(title))
        portal = await _load(conn, portal_id)
        await _announce(conn, "portal.created", portal)
    log.info("portal_created", portal_id=str(portal.id), slug=portal.slug)
    return portal


async def _insert_with_generated_slug(
    conn: Conn, insert: Callable[..., Awaitable[None]], base: str
) -> None:
    """base, base-2, base-3…; a concurrent create may take the same choice first, so a
    clash just moves on to the next free one."""
    start = 1
    for _ in range(_SLUG_ATTEMPTS):
        candidates = [slug_candidate(base, n) for n in range(start, start + _SLUG_BATCH)]
        slug = first_free_slug(candidates, await repo.taken_slugs(conn, candidates))
        if slug is None:
            start += _SLUG_BATCH
            continue
        if await _unless_slug_taken(conn, partial(insert, slug=slug)):
            return
    raise Conflict("Could not find a free slug; please choose one.", code="slug_taken")


async def update_portal(
    deps: Deps, portal_id: uuid.UUID, changes: dict[str, Any], *, revision: int | None = None
) -> Portal:
    """``changes`` holds only the fields the caller sent (title, slug, content, status).
    Nothing actually different → no new revision and no event. With ``revision``, only a
    portal still at that revision is changed: a caller that read it, changed it and writes
    it back never undoes a change saved in between."""
    content_html = await _render(changes["content"]) if "content" in changes else None
    async with transaction(deps.db) as conn:
        if not await repo.lock(conn, portal_id):
            raise _not_found()
        current = await _load(conn, portal_id)
        if revision is not None and revision != current.revision:
            raise Conflict(
                f"The portal has changed since revision {revision}; it is at revision"
                f" {current.revision} now. Read it again and make your change to that.",
                code="portal_changed",
                details={"revision": current.revision},
            )
        diff = {k: v for k, v in changes.items() if getattr(current, k) != v}
        if not diff:
            return current
        if "content" in diff:
            diff["content_html"] = content_html
            diff["rendered_with"] = RENDERER
        if not await _unless_slug_taken(conn, partial(repo.update, conn, portal_id, diff)):
            raise _slug_taken(str(diff["slug"]))
        portal = await _load(conn, portal_id)
        await _announce(conn, "portal.updated", portal)
    log.info("portal_updated", portal_id=str(portal_id), fields=sorted(changes))
    return portal


# --- access ---------------------------------------------------------------------------
async def set_client(deps: Deps, portal_id: uuid.UUID, user_id: uuid.UUID | None) -> Portal:
    """Make ``user_id`` the primary client (a sub-client is promoted); the previous
    client loses access. ``None`` removes the primary client."""
    async with transaction(deps.db) as conn:
        if not await repo.lock(conn, portal_id):
            raise _not_found()
        current = await repo.client_of(conn, portal_id)
        if current != user_id:
            if user_id is not None:
                await _check_open(conn, [user_id])
            if current is not None:
                for old, role in await repo.delete_access(conn, portal_id, [current]):
                    await _access_changed(conn, False, portal_id, old, role)
            if user_id is not None:
                await repo.put_access(conn, portal_id, user_id, "client", None)
                await _access_changed(conn, True, portal_id, user_id, "client")
        return await _load(conn, portal_id)


async def set_sub_clients(deps: Deps, portal_id: uuid.UUID, user_ids: list[uuid.UUID]) -> Portal:
    """Replace the set of sub-clients. The primary client can't also be a sub-client."""
    wanted = list(dict.fromkeys(user_ids))
    async with transaction(deps.db) as conn:
        if not await repo.lock(conn, portal_id):
            raise _not_found()
        client = await repo.client_of(conn, portal_id)
        if client is not None and client in wanted:
            raise Conflict(
                "That user is the portal's primary client; a user can't be both the client "
                "and a sub-client. Change the Client first.",
                code="user_is_client",
            )
        current = set(await repo.sub_clients_of(conn, portal_id))
        await _check_open(conn, [u for u in wanted if u not in current])
        gone = [u for u in current if u not in set(wanted)]
        for old, role in await repo.delete_access(conn, portal_id, gone):
            await _access_changed(conn, False, portal_id, old, role)
        for user_id in wanted:
            if user_id not in current:
                await repo.put_access(conn, portal_id, user_id, "sub_client", None)
                await _access_changed(conn, True, portal_id, user_id, "sub_client")
        return await _load(conn, portal_id)


async def grant_access(
    deps: Deps,
    portal_id: uuid.UUID,
    user_id: uuid.UUID,
    requested: Role | None,
    grant_key: str | None,
    idempotency_key: str | None = None,
    accepted_at: datetime | None = None,
) -> tuple[Portal, Role]:
    """Give a user access; idempotent under ``grant_key`` (an invitation id). The portal
    row lock serialises concurrent grants, and the one-client index backs it up.
    ``idempotency_key``: the key the invitation was made under, for the event.
    ``accepted_at``: when the invitation was accepted, for a grant heard from its event or
    asked by the accept saga (a disabled account's, or one made before its Disable, is
    refused: user_disabled)."""
    async with transaction(deps.db) as conn:
        if not await repo.lock(conn, portal_id):
            raise _not_found()
        if grant_key is not None:
            applied = await repo.applied_grant(conn, grant_key)
            if applied is not None:
                if applied["portal_id"] != portal_id or applied["user_id"] != user_id:
                    raise Conflict(
                        "This grant key was already used for another portal or user.",
                        code="grant_key_conflict",
                    )
                role = await repo.role_of(conn, portal_id, user_id) or applied["role"]
                return await _load(conn, portal_id), role
        await _check_open(conn, [user_id], accepted_at)
        existing = await repo.role_of(conn, portal_id, user_id)
        client = await repo.client_of(conn, portal_id)
        role = resolve_role(requested, existing, client is not None and client != user_id)
        if role != existing:
            await repo.put_access(conn, portal_id, user_id, role, grant_key)
            await _access_changed(conn, True, portal_id, user_id, role, idempotency_key)
        if grant_key is not None:
            try:
                async with conn.transaction():
                    await repo.record_grant(conn, grant_key, portal_id, user_id, role)
            except asyncpg.UniqueViolationError:
                # The same key, used at once for another portal (ours is locked).
                raise Conflict(
                    "This grant key was already used for another portal or user.",
                    code="grant_key_conflict",
                ) from None
        portal = await _load(conn, portal_id)
    log.info("portal_access_granted", portal_id=str(portal_id), user_id=str(user_id), role=role)
    return portal, role


async def remove_user(deps: Deps, user_id: uuid.UUID, at: datetime, *, erased: bool) -> int:
    """Take the user off every portal: the account was disabled or erased at ``at``
    (identity's clock), and stays remembered so (grants check it). A Disable heard after
    a later Enable leaves the account enabled and takes only the access granted before
    it: not a portal given by an invitation accepted since."""
    async with transaction(deps.db) as conn:
        await repo.lock_account(conn, user_id)
        account = await repo.note_account(conn, user_id, "erased" if erased else "disabled", at)
        removed = await repo.delete_user_access(conn, user_id, None if account.closed else at)
        for portal_id, role in removed:
            await _access_changed(conn, False, portal_id, user_id, role)
    log.info("user_access_removed", user_id=str(user_id), portals=len(removed))
    return len(removed)


async def note_enabled(deps: Deps, user_id: uuid.UUID, at: datetime) -> None:
    """The account was enabled at ``at`` (identity's clock): later grants may give it
    portals again. It gets none back: only a new invitation gives access."""
    async with transaction(deps.db) as conn:
        await repo.lock_account(conn, user_id)
        await repo.note_account(conn, user_id, "enabled", at)
    log.info("user_enabled_noted", user_id=str(user_id))


# --- reads ----------------------------------------------------------------------------
async def get_portal(deps: Deps, portal_id: uuid.UUID) -> Portal:
    async with connection(deps.db) as conn:
        return await _load(conn, portal_id)


async def get_portal_by_slug(deps: Deps, slug: str) -> Portal:
    async with connection(deps.db) as conn:
        portal = await repo.get_by_slug(conn, slug)
    if portal is None:
        raise _not_found()
    return portal


async def list_portals(
    deps: Deps,
    *,
    status: Status | None,
    q: str | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[Portal], bool]:
    """One page, newest first, and whether more follow."""
    async with connection(deps.db) as conn:
        rows = await repo.page(conn, status=status, q=q or None, limit=limit + 1, after=after)
    return page_of(rows, limit)


async def user_portals(deps: Deps, user_id: uuid.UUID) -> list[tuple[Portal, Role]]:
    async with connection(deps.db) as conn:
        return await repo.user_portals(conn, user_id)


async def users_portals(
    deps: Deps, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[Portal, Role]]]:
    """Each user's portals (a page of the Users screen) in one query."""
    async with connection(deps.db) as conn:
        return await repo.users_portals(conn, list(dict.fromkeys(user_ids)))


async def user_portal(deps: Deps, user_id: uuid.UUID, slug: str) -> tuple[Portal, Role]:
    """Not found and no access look the same (404), so portal names don't leak."""
    async with connection(deps.db) as conn:
        found = await repo.user_portal(conn, user_id, slug)
    if found is None:
        raise _not_found()
    return found
