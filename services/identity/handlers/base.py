"""What every identity use case shares: its dependencies and the events it announces."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from libs.common.db import Conn
from libs.common.errors import NotFound
from libs.common.events import SessionRevoked, UserCreated, make_event
from libs.common.outbox import append
from libs.common.sealing import Sealer

from ..domain import SessionPolicy, User
from ..passwords import Passwords

SOURCE = "identity"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    passwords: Passwords
    sessions: SessionPolicy
    public_base: str
    site_name: str
    sealer: Sealer  # seals the links in the mail jobs this service writes
    now: Callable[[], datetime] = utcnow


def no_user() -> NotFound:
    return NotFound("No user has this id or email.", code="user_not_found")


async def announce_created(conn: Conn, user: User) -> None:
    data = UserCreated(user_id=user.id, email=user.email, role=user.role)
    await append(conn, make_event("identity.user.created", data, source=SOURCE))


async def announce_revoked(
    conn: Conn, user_id: uuid.UUID, reason: str, *, session_id: uuid.UUID | None = None
) -> None:
    """One session (log out) or, without ``session_id``, every session of the user."""
    data = SessionRevoked(user_id=user_id, reason=reason, session_id=session_id)
    await append(conn, make_event("identity.session.revoked", data, source=SOURCE))
