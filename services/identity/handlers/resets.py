"""Password reset use cases: request (no enumeration), validate, confirm (single use)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from libs.common.db import connection, transaction
from libs.common.email import normalise_email
from libs.common.errors import Gone, InvalidInput, NotFound
from libs.common.events import MailRequested, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append

from .. import repository as repo
from ..domain import RESET_LIFETIME, check_password, hash_token, new_token
from .base import SOURCE, Deps, announce_revoked

log = get_logger(__name__)

RESETS_PER_HOUR = 5


async def request_password_reset(deps: Deps, email: str) -> None:
    """Says nothing about whether the account exists; mails a link only when it does."""
    try:
        address = normalise_email(email)
    except InvalidInput:
        return
    now = deps.clock()
    async with transaction(deps.db) as conn:
        user = await repo.find_user_by_email(conn, address)
        if user is None or user.disabled:
            return
        # A cap per account, so the form can't be used to flood someone's inbox.
        if await repo.recent_resets(conn, user.id, now - timedelta(hours=1)) >= RESETS_PER_HOUR:
            log.warning("password_reset_throttled", user_id=str(user.id))
            return
        token = new_token()
        expires_at = now + RESET_LIFETIME
        reset_id = await repo.insert_reset(
            conn,
            token_hash=hash_token(token),
            user_id=user.id,
            created_at=now,
            expires_at=expires_at,
        )
        mail = MailRequested(
            mail_id=uuid.uuid4(),
            template="password_reset",
            to=user.email,
            ref_type="password_reset",
            ref_id=reset_id,
            context=deps.sealer.seal(
                {
                    "reset_url": f"{deps.public_base}/reset-password?token={token}",
                    "expires_at": expires_at.isoformat(),
                    "site_name": deps.site_name,
                }
            ),
            locale=user.locale,
        )
        await append(conn, make_event("mail.requested", mail, source=SOURCE))
    log.info("password_reset_requested", user_id=str(user.id), reset_id=str(reset_id))


# A link that no longer works is 410 reset_expired whether it was used or ran out of
# time (the code callers know); ``reason`` says which, so a page can tell the person.
USED = {"reason": "used"}
EXPIRED = {"reason": "expired"}


def _used() -> Gone:
    return Gone(
        "This password reset link has already been used. Ask for a new one.",
        code="reset_expired",
        details=USED,
    )


def _reset_error(reset: repo.ResetRow | None, now: datetime) -> Exception | None:
    if reset is None or reset.disabled:
        return NotFound("This password reset link is not valid.", code="reset_invalid")
    if reset.used_at is not None:
        return _used()
    if reset.expires_at <= now:
        return Gone(
            "This password reset link has expired. Ask for a new one.",
            code="reset_expired",
            details=EXPIRED,
        )
    return None


async def validate_reset(deps: Deps, token: str) -> str:
    async with connection(deps.db) as conn:
        reset = await repo.find_reset(conn, hash_token(token))
    error = _reset_error(reset, deps.clock())
    if error is not None:
        raise error
    assert reset is not None
    return reset.email


async def confirm_reset(deps: Deps, token: str, password: str) -> None:
    """Single use even under concurrent confirms: the conditional UPDATE picks one winner."""
    token_hash = hash_token(token)
    async with connection(deps.db) as conn:
        reset = await repo.find_reset(conn, token_hash)
    error = _reset_error(reset, deps.clock())
    if error is not None:
        raise error
    assert reset is not None
    # The policy is checked before the link is used, so a refused password doesn't burn it.
    check_password(password, reset.email)
    password_hash = await deps.passwords.hash(password)
    now = deps.clock()
    async with transaction(deps.db) as conn:
        user_id = await repo.use_reset(conn, token_hash, now)
        if user_id is None:
            raise _reset_error(await repo.find_reset(conn, token_hash), now) or _used()
        await repo.set_password_hash(conn, user_id, password_hash)
        await repo.close_user_resets(conn, user_id, now)
        if await repo.revoke_user_sessions(conn, user_id, now):
            await announce_revoked(conn, user_id, "password_reset")
    log.info("password_reset_completed", user_id=str(user_id))
