"""Session use cases: log in, issue, check (idle and absolute expiry), log out; and the
login settings."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from libs.common.db import connection, transaction
from libs.common.email import normalise_email
from libs.common.errors import Conflict, InvalidInput, Unauthorized
from libs.common.events import SettingsChanged, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append

from .. import repository as repo
from ..domain import User, hash_token, new_token
from ..passwords import HashingBusy
from .base import SOURCE, Deps, announce_revoked
from .users import get_user

log = get_logger(__name__)


@dataclass(frozen=True)
class IssuedSession:
    token: str
    user: User
    session: repo.SessionRow
    idle_expires_at: datetime


@dataclass(frozen=True)
class CurrentSession:
    user: User
    session: repo.SessionRow
    idle_expires_at: datetime


def _bad_credentials() -> Unauthorized:
    return Unauthorized("The email or password is incorrect.", code="invalid_credentials")


async def login(deps: Deps, email: str, password: str) -> IssuedSession:
    """Unknown, disabled and wrong-password logins answer alike and cost one verify each."""
    try:
        address: str | None = normalise_email(email)
    except InvalidInput:
        address = None
    found = None
    if address is not None:
        async with connection(deps.db) as conn:
            found = await repo.find_credentials(conn, address)
    if found is None or found[0].disabled:
        await deps.passwords.verify_dummy(password)
        log.info("login_failed", reason="unknown_or_disabled")
        raise _bad_credentials()
    user, password_hash = found
    if not await deps.passwords.verify(password_hash, password):
        log.info("login_failed", reason="wrong_password", user_id=str(user.id))
        raise _bad_credentials()
    if deps.passwords.needs_rehash(password_hash):
        # The right password never waits for an upgrade of its hash: with the hash queue
        # full, the upgrade waits for a quieter login.
        with contextlib.suppress(HashingBusy):
            fresh = await deps.passwords.hash(password)
            async with connection(deps.db) as conn:
                await repo.replace_password_hash(conn, user.id, password_hash, fresh)
    issued = await _open_session(deps, user)
    if issued is None:  # disabled while the password was checked
        log.info("login_failed", reason="unknown_or_disabled")
        raise _bad_credentials()
    log.info("login_succeeded", user_id=str(user.id))
    return issued


async def issue_session(deps: Deps, user_id: uuid.UUID) -> IssuedSession:
    user = await get_user(deps, user_id)
    issued = None if user.disabled else await _open_session(deps, user)
    if issued is None:
        raise Conflict("This account is disabled.", code="account_disabled")
    return issued


async def _open_session(deps: Deps, user: User) -> IssuedSession | None:
    """A new session, or None when the account is disabled by now. The check holds the
    account's row until the session is written: a Disable landing between a caller's read
    of the account and this write would otherwise leave a session it never ended, live
    again the day the account is enabled."""
    token = new_token()
    now = deps.clock()
    async with transaction(deps.db) as conn:
        if not await repo.hold_enabled(conn, user.id):
            return None
        session = await repo.insert_session(
            conn,
            token_hash=hash_token(token),
            user_id=user.id,
            created_at=now,
            expires_at=deps.sessions.expires_at(now),
        )
    idle_expires_at = deps.sessions.idle_expires_at(
        last_seen_at=session.last_seen_at, expires_at=session.expires_at
    )
    return IssuedSession(token=token, user=user, session=session, idle_expires_at=idle_expires_at)


def _no_session() -> Unauthorized:
    return Unauthorized("You are not logged in, or your session has ended.", code="no_session")


async def current_session(deps: Deps, token: str | None) -> CurrentSession:
    if not token:
        raise _no_session()
    now = deps.clock()
    async with connection(deps.db) as conn:
        found = await repo.find_session(conn, hash_token(token))
        if found is None:
            raise _no_session()
        session, user = found
        live = deps.sessions.is_live(
            last_seen_at=session.last_seen_at, expires_at=session.expires_at, now=now
        )
        if user.disabled or not live:
            raise _no_session()
        if deps.sessions.needs_touch(session.last_seen_at, now):
            await repo.touch_session(conn, session.id, now)
            session = repo.SessionRow(
                session.id, session.user_id, session.created_at, now, session.expires_at
            )
    idle_expires_at = deps.sessions.idle_expires_at(
        last_seen_at=session.last_seen_at, expires_at=session.expires_at
    )
    return CurrentSession(user=user, session=session, idle_expires_at=idle_expires_at)


async def logout(deps: Deps, token: str | None) -> None:
    """Idempotent: ending an unknown or already ended session is not an error."""
    if not token:
        raise _no_session()
    async with transaction(deps.db) as conn:
        revoked = await repo.revoke_session(conn, hash_token(token), deps.clock())
        if revoked is not None:
            user_id, session_id = revoked
            await announce_revoked(conn, user_id, "logout", session_id=session_id)


# --- login settings ----------------------------------------------------------------------
async def get_login_redirect(deps: Deps) -> bool:
    async with connection(deps.db) as conn:
        return await repo.get_login_redirect(conn)


async def set_login_redirect(deps: Deps, value: bool) -> bool:
    """A change (not a save of the same value) is announced as identity.settings.changed."""
    async with transaction(deps.db) as conn:
        before = await repo.get_login_redirect(conn, for_update=True)
        after = await repo.set_login_redirect(conn, value)
        if after != before:
            data = SettingsChanged(
                changes={"login_redirect": after}, previous={"login_redirect": before}
            )
            await append(conn, make_event("identity.settings.changed", data, source=SOURCE))
        return after
