"""What every identity use case shares: its dependencies and the events it announces.
Use cases take ``deps`` first and work on ``deps.db``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from libs.common.db import Conn, UseCaseDeps, utcnow
from libs.common.errors import NotFound
from libs.common.events import SessionRevoked, UserCreated, make_event
from libs.common.outbox import append
from libs.common.sealing import Sealer

from ..domain import SessionPolicy, User
from ..passwords import Passwords

SOURCE = "identity"


__all__ = ["SOURCE", "Deps", "announce_created", "announce_revoked", "no_user", "utcnow"]


@dataclass(frozen=True)
class Deps(UseCaseDeps):
    """``db`` (the pool, or a consumer's connection) and ``clock`` from UseCaseDeps; the
    password hasher, the session policy and what the mail jobs need."""

    passwords: Passwords
    sessions: SessionPolicy
    public_base: str
    site_name: str
    sealer: Sealer  # seals the links in the mail jobs this service writes


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
