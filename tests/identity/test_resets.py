"""Password resets on the real schema: no enumeration, the private mail job, single use."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from libs.common.errors import DomainError, Gone, InvalidInput, NotFound, Unauthorized
from services.identity import handlers
from services.identity.domain import RESET_LIFETIME
from services.identity.handlers import RESETS_PER_HOUR, Deps
from tests.identity.helpers import STRONG, Clock, new_email, outbox_events

pytestmark = pytest.mark.integration


async def _mail_for(pool: asyncpg.Pool, address: str) -> list[dict[str, Any]]:
    jobs = await outbox_events(pool, "mail.requested")
    return [j for j in jobs if j["data"]["to"] == address]


async def _request_token(deps: Deps, pool: asyncpg.Pool, address: str) -> str:
    await handlers.request_password_reset(deps, address)
    job = (await _mail_for(pool, address))[-1]
    url: str = job["data"]["context"]["reset_url"]
    return parse_qs(urlsplit(url).query)["token"][0]


async def test_reset_request_writes_a_private_mail_job(deps: Deps, pool: asyncpg.Pool) -> None:
    user = await handlers.create_user(deps, new_email("reset"), STRONG, "client")
    await handlers.request_password_reset(deps, user.email.upper())
    jobs = await _mail_for(pool, user.email)
    assert len(jobs) == 1
    job = jobs[0]
    assert job["exchange"] == "mail"
    data = job["data"]
    assert data["template"] == "password_reset" and data["ref_type"] == "password_reset"
    reset_id = await pool.fetchval("SELECT id FROM password_resets WHERE user_id = $1", user.id)
    assert data["ref_id"] == str(reset_id)
    context = data["context"]
    assert context["site_name"] == "portal.example.com"
    assert context["reset_url"].startswith("https://portal.example.com/reset-password?token=")
    assert context["expires_at"] == (deps.clock() + RESET_LIFETIME).isoformat()
    assert data["locale"] is None  # no Language chosen: the mailer uses the branding's
    token = parse_qs(urlsplit(context["reset_url"]).query)["token"][0]
    stored = await pool.fetchval("SELECT token_hash FROM password_resets WHERE id = $1", reset_id)
    assert stored != token and len(stored) == 64
    # Nothing public mentions the token.
    for key in ("identity.user.created", "identity.session.revoked"):
        assert token not in str(await outbox_events(pool, key))


async def test_unknown_invalid_and_disabled_emails_send_nothing(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    ghost = new_email("ghost")
    await handlers.request_password_reset(deps, ghost)
    await handlers.request_password_reset(deps, "not an email")
    user = await handlers.create_user(deps, new_email("off"), STRONG, "client")
    await handlers.disable_user(deps, user.id)
    await handlers.request_password_reset(deps, user.email)
    assert await _mail_for(pool, ghost.rsplit("@")[0] + "@example.com") == []
    assert await _mail_for(pool, user.email) == []


async def test_resets_are_capped_per_hour(deps: Deps, pool: asyncpg.Pool, clock: Clock) -> None:
    user = await handlers.create_user(deps, new_email("flood"), STRONG, "client")
    for _ in range(RESETS_PER_HOUR + 3):
        await handlers.request_password_reset(deps, user.email)
    assert len(await _mail_for(pool, user.email)) == RESETS_PER_HOUR
    clock.advance(hours=1, seconds=1)
    await handlers.request_password_reset(deps, user.email)
    assert len(await _mail_for(pool, user.email)) == RESETS_PER_HOUR + 1


async def test_validate_then_confirm_ends_sessions_and_the_link(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    user = await handlers.create_user(deps, new_email("confirm"), STRONG, "client")
    session = await handlers.login(deps, user.email, STRONG)
    token = await _request_token(deps, pool, user.email)
    other = await _request_token(deps, pool, user.email)
    assert await handlers.validate_reset(deps, token) == user.email

    with pytest.raises(InvalidInput) as weak:
        await handlers.confirm_reset(deps, token, "password123456")
    assert weak.value.code == "weak_password"
    assert await handlers.validate_reset(deps, token) == user.email  # not burnt

    await handlers.confirm_reset(deps, token, "a fresh new passphrase")
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, session.token)
    assert (await handlers.login(deps, user.email, "a fresh new passphrase")).user.id == user.id
    for used in (token, other):  # the user's other outstanding link dies too
        with pytest.raises(Gone) as info:
            await handlers.validate_reset(deps, used)
        assert info.value.code == "reset_expired"
    revoked = [
        e
        for e in await outbox_events(pool, "identity.session.revoked")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert [e["data"]["reason"] for e in revoked] == ["password_reset"]


async def test_a_disabled_account_keeps_no_reset_link_for_when_it_is_enabled(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    """Disabling ends what lets someone in: the sessions, and the reset links out in an
    inbox too. Enabling the account again (within the link's hour) brings none back."""
    user = await handlers.create_user(deps, new_email("paused"), STRONG, "client")
    token = await _request_token(deps, pool, user.email)
    await handlers.disable_user(deps, user.id)
    await handlers.enable_user(deps, user.id)
    with pytest.raises(Gone) as info:
        await handlers.validate_reset(deps, token)
    assert info.value.code == "reset_expired"
    with pytest.raises(Gone):
        await handlers.confirm_reset(deps, token, "a fresh new passphrase")
    assert (await handlers.login(deps, user.email, STRONG)).user.id == user.id
    # A link asked for after it was enabled works as usual.
    fresh = await _request_token(deps, pool, user.email)
    assert await handlers.validate_reset(deps, fresh) == user.email


async def test_a_password_set_another_way_ends_the_reset_links_out(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    """A new password (the accept saga's retry sets one) ends the account's reset links as
    a reset does: a link asked for under the old password can't replace the new one."""
    user = await handlers.create_user(deps, new_email("changed"), STRONG, "client")
    token = await _request_token(deps, pool, user.email)
    await handlers.change_password(deps, user.id, "a fresh new passphrase")
    with pytest.raises(Gone) as info:
        await handlers.validate_reset(deps, token)
    assert info.value.code == "reset_expired"
    with pytest.raises(Gone):
        await handlers.confirm_reset(deps, token, "an attackers passphrase")
    assert (await handlers.login(deps, user.email, "a fresh new passphrase")).user.id == user.id


async def test_expired_and_unknown_links(deps: Deps, pool: asyncpg.Pool, clock: Clock) -> None:
    user = await handlers.create_user(deps, new_email("expiry"), STRONG, "client")
    token = await _request_token(deps, pool, user.email)
    clock.advance(hours=1)
    with pytest.raises(Gone) as info:
        await handlers.validate_reset(deps, token)
    assert (info.value.code, info.value.details) == ("reset_expired", {"reason": "expired"})
    with pytest.raises(Gone):
        await handlers.confirm_reset(deps, token, "a fresh new passphrase")
    with pytest.raises(NotFound) as missing:
        await handlers.validate_reset(deps, "no-such-token")
    assert missing.value.code == "reset_invalid"


async def test_sixteen_concurrent_confirms_use_the_link_once(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    user = await handlers.create_user(deps, new_email("reset-race"), STRONG, "client")
    token = await _request_token(deps, pool, user.email)
    results = await asyncio.gather(
        *(handlers.confirm_reset(deps, token, f"race passphrase number {i}") for i in range(16)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    losers = [r for r in results if isinstance(r, DomainError)]
    assert len(winners) == 1 and len(losers) == 15
    assert all((r.code, r.details) == ("reset_expired", {"reason": "used"}) for r in losers)
    issued = await handlers.login(deps, user.email, f"race passphrase number {winners[0]}")
    assert issued.user.id == user.id


async def test_reset_mail_job_carries_the_users_language(deps: Deps, pool: asyncpg.Pool) -> None:
    user = await handlers.create_user(deps, new_email("reset-de"), STRONG, "client")
    await handlers.set_preferences(deps, user.id, "de", "Europe/Berlin")
    await handlers.request_password_reset(deps, user.email)
    (job,) = await _mail_for(pool, user.email)
    assert job["data"]["locale"] == "de"
