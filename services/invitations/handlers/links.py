"""The link a person clicks: validate it (never used up) and accept it, exactly once."""

from __future__ import annotations

import uuid

import asyncpg

from libs.common.errors import Conflict, NotFound
from libs.common.events import InvitationAccepted

from .. import domain
from .. import repository as repo
from .base import Deps, Row, emit, log


def _invalid() -> NotFound:
    return NotFound(
        "This invitation link is not valid. Check the link in your email.",
        code="invitation_invalid",
    )


def _token_hash(token: str) -> str:
    if not token or len(token) > domain.MAX_TOKEN_LENGTH:
        raise _invalid()
    return domain.hash_token(token)


async def validate(pool: asyncpg.Pool, deps: Deps, token: str) -> tuple[Row, bool]:
    """The invitation behind a link, and whether its email has an account. Never uses it."""
    token_hash = _token_hash(token)
    async with pool.acquire() as conn:
        row = await repo.find_by_token(conn, token_hash)
    if row is None:
        raise _invalid()
    domain.check_token_usable(row["status"], row["expires_at"], deps.clock())
    account_exists = await deps.directory.find_user_id(row["email"]) is not None
    return row, account_exists


async def accept(pool: asyncpg.Pool, deps: Deps, token: str, user_id: uuid.UUID) -> Row:
    token_hash = _token_hash(token)
    now = deps.clock()
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.accept(conn, token_hash, user_id, now)
        if row is None:
            current = await repo.find_by_token(conn, token_hash)
            if current is None:
                raise _invalid()
            domain.check_token_usable(current["status"], current["expires_at"], now)
            raise Conflict("This invitation has already been used.", code="invitation_used")
        await emit(
            conn,
            "invitation.accepted",
            InvitationAccepted(
                invitation_id=row["id"],
                portal_id=row["portal_id"],
                email=row["email"],
                user_id=user_id,
                sub_client=row["sub_client"],
            ),
        )
    log.info("invitation_accepted", invitation_id=str(row["id"]), user_id=str(user_id))
    return row
