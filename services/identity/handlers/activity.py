"""The Activity log: record an entry from an event (the consumer), read it newest first
in keyset pages, and list who appears in it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

from libs.common.cursor import decode_cursor, encode_cursor, page_of
from libs.common.db import Conn, connection

from .. import activity_repository as repo
from ..domain import ERASED_LABEL, ActivityEntry
from .base import Deps

MAX_ACTORS = 200


async def record_activity(deps: Deps, entry: ActivityEntry) -> bool:
    return (await record_activities(deps, [entry]))[0]


async def record_activities(deps: Deps, entries: Sequence[ActivityEntry]) -> list[bool]:
    """In the consumer, on its inbox transaction's connection (with the inbox rows), in
    one statement for the events that arrived together. A user named only by id is
    labelled with their email, which this service owns. For each, True when recorded."""
    async with connection(deps.db) as conn:
        labelled = [
            replace(entry, object_label=await _user_label(conn, entry, entry.object_id))
            if entry.object_type == "user" and not entry.object_label and entry.object_id
            else entry
            for entry in entries
        ]
        return await repo.insert_many(conn, labelled)


async def _user_label(conn: Conn, entry: ActivityEntry, user_id: str) -> str:
    """The user's email; for their erasure, whose account is gone by then, ERASED_LABEL."""
    if entry.action == "user.erased":
        return ERASED_LABEL
    return await repo.user_email(conn, uuid.UUID(user_id)) or ""


async def list_activity(
    deps: Deps,
    *,
    actor: str | None,
    action: str | None,
    portal_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[ActivityEntry], str | None]:
    after = decode_cursor("activity", cursor) if cursor else None
    entries = await repo.page(
        deps.db,
        actor_id=actor,
        action=action,
        portal_id=portal_id,
        after=after,
        limit=limit + 1,
    )
    entries, more = page_of(entries, limit)
    next_cursor = (
        encode_cursor("activity", entries[-1].occurred_at, entries[-1].id) if more else None
    )
    return entries, next_cursor


async def activity_actors(deps: Deps) -> list[dict[str, str]]:
    rows = await repo.actors(deps.db, MAX_ACTORS)
    return [
        {"id": row["actor_id"], "type": row["actor_type"], "name": row["actor_name"]}
        for row in rows
    ]
