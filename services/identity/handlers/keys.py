"""Integration keys: create (the key is shown once), list, revoke, and verify a key for
the gateway. Only a key's sha256 is stored."""

from __future__ import annotations

import uuid

from libs.common.db import Conn, connection, transaction
from libs.common.errors import Conflict, NotFound, Unauthorized
from libs.common.events import ApiKeyChanged, make_event
from libs.common.outbox import append

from .. import domain
from .. import repository as repo
from .base import SOURCE, Deps


async def create_api_key(
    deps: Deps,
    name: str,
    scopes: list[str],
    created_by: uuid.UUID | None,
    request_id: str | None = None,
) -> tuple[repo.ApiKey, str]:
    """``request_id``: the one-time id of the form that asks; sent again (a reload after
    Create Key), it makes no second key, and the first key is never shown again."""
    name, scopes = domain.check_key_name(name), domain.check_scopes(scopes)
    key, key_hash, prefix = domain.new_api_key()
    async with transaction(deps.db) as conn:
        created = await repo.insert_api_key(
            conn,
            name=name,
            scopes=scopes,
            key_hash=key_hash,
            prefix=prefix,
            created_by=created_by,
            created_at=deps.clock(),
            request_id=request_id,
        )
        if created is None:
            raise Conflict(
                "This form already created its key, which was shown once. If you didn't"
                " copy it, revoke that key and create another.",
                code="key_already_created",
            )
        await _announce(conn, "identity.key.created", created)
    return created, key


async def _announce(conn: Conn, event_type: str, key: repo.ApiKey) -> None:
    data = ApiKeyChanged(key_id=key.id, name=key.name, scopes=list(key.scopes))
    await append(conn, make_event(event_type, data, source=SOURCE))


async def list_api_keys(deps: Deps) -> list[repo.ApiKey]:
    async with connection(deps.db) as conn:
        return await repo.live_api_keys(conn)


async def revoke_api_key(deps: Deps, key_id: uuid.UUID) -> repo.ApiKey:
    async with transaction(deps.db) as conn:
        revoked = await repo.revoke_api_key(conn, key_id, deps.clock())
        if revoked is not None:
            await _announce(conn, "identity.key.revoked", revoked)
    if revoked is None:
        raise NotFound("There is no live key with this id.", code="key_not_found")
    return revoked


async def verify_api_key(deps: Deps, key: str) -> repo.ApiKey:
    """The live key behind ``key``, its use recorded; 401 for anything else (unknown,
    revoked or malformed keys are told apart by nobody)."""
    refused = Unauthorized("This API key is not valid.", code="invalid_api_key")
    if not key.startswith(domain.API_KEY_PREFIX) or len(key) > 100:
        raise refused
    now = deps.clock()
    async with connection(deps.db) as conn:
        found = await repo.find_live_api_key(conn, domain.hash_api_key(key))
        if found is None:
            raise refused
        if found.last_used_at is None or found.last_used_at < now - domain.KEY_TOUCH_INTERVAL:
            await repo.touch_api_key(conn, found.id, now, now - domain.KEY_TOUCH_INTERVAL)
    return found
