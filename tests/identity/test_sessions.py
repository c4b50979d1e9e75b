"""Sessions on the real schema: login, issue, idle/absolute expiry (injected clock), logout."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from libs.common.errors import Conflict, NotFound, Unauthorized
from services.identity import handlers
from services.identity import repository as repo
from services.identity.domain import User, hash_token
from services.identity.handlers import Deps
from services.identity.passwords import HashingBusy, default_hasher
from tests.identity.helpers import (
    STRONG,
    Clock,
    CountingPasswords,
    cheap_hasher,
    new_email,
    outbox_events,
)

pytestmark = pytest.mark.integration


async def test_login_returns_a_token_stored_only_as_a_hash(deps: Deps, pool: asyncpg.Pool) -> None:
    email = new_email("login")
    user = await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, f"  {email.upper()} ", STRONG)
    assert issued.user.id == user.id
    assert issued.session.expires_at == deps.clock() + deps.sessions.absolute
    stored = await pool.fetchval("SELECT token_hash FROM sessions WHERE id = $1", issued.session.id)
    assert stored != issued.token and len(stored) == 64
    assert (
        await pool.fetchval("SELECT count(*) FROM sessions WHERE token_hash = $1", issued.token)
        == 0
    )


async def test_wrong_and_unknown_logins_answer_alike_and_both_verify(
    deps: Deps, passwords: CountingPasswords
) -> None:
    email = new_email("creds")
    await handlers.create_user(deps, email, STRONG, "client")
    errors = []
    for attempt in (
        (email, "not the right passphrase"),
        (new_email("ghost"), STRONG),
        ("not an email at all", STRONG),
    ):
        before = passwords.verifies
        with pytest.raises(Unauthorized) as info:
            await handlers.login(deps, *attempt)
        assert passwords.verifies == before + 1  # one argon2 verify, known or not
        errors.append((info.value.code, info.value.message))
    assert len(set(errors)) == 1 and errors[0][0] == "invalid_credentials"


async def test_login_rehashes_an_outdated_hash(deps: Deps, pool: asyncpg.Pool) -> None:
    email = new_email("rehash")
    user = await handlers.create_user(deps, email, STRONG, "client")  # cheap test profile
    old = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert "m=8192" in old
    strong = CountingPasswords(default_hasher())
    try:
        await handlers.login(replace(deps, passwords=strong), email, STRONG)
    finally:
        strong.close()
    new = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert new.startswith("$argon2id$") and "m=65536,t=3" in new
    assert (await handlers.login(deps, email, STRONG)).user.id == user.id


class BusyForNewHashes(CountingPasswords):
    """The real verify; every new hash refused, as when the hash queue is full."""

    async def hash(self, password: str) -> str:
        raise HashingBusy("Too many sign-ins at once.", retry_after=4)


async def test_a_full_hash_queue_postpones_the_rehash_not_the_login(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email = new_email("rehash-busy")
    user = await handlers.create_user(deps, email, STRONG, "client")  # cheap test profile
    old = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    busy = BusyForNewHashes(default_hasher())
    try:
        issued = await handlers.login(replace(deps, passwords=busy), email, STRONG)
    finally:
        busy.close()
    assert issued.user.id == user.id and busy.verifies == 1
    assert await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id) == old


async def test_current_session_touches_only_after_a_minute(
    deps: Deps, clock: Clock, pool: asyncpg.Pool
) -> None:
    email = new_email("touch")
    await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, email, STRONG)
    start = clock()
    clock.advance(seconds=30)
    current = await handlers.current_session(deps, issued.token)
    assert current.session.last_seen_at == start
    clock.advance(seconds=40)
    current = await handlers.current_session(deps, issued.token)
    assert current.session.last_seen_at == clock()
    stored = await pool.fetchval(
        "SELECT last_seen_at FROM sessions WHERE id = $1", issued.session.id
    )
    assert stored == clock()
    assert current.idle_expires_at == clock() + deps.sessions.idle


async def test_idle_timeout_ends_a_session(deps: Deps, clock: Clock) -> None:
    email = new_email("idle")
    await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, email, STRONG)
    clock.advance(minutes=119)
    await handlers.current_session(deps, issued.token)  # touched: idle restarts
    clock.advance(minutes=119)
    await handlers.current_session(deps, issued.token)
    clock.advance(minutes=121)
    with pytest.raises(Unauthorized) as info:
        await handlers.current_session(deps, issued.token)
    assert info.value.code == "no_session"


async def test_absolute_limit_ends_an_active_session(deps: Deps, clock: Clock) -> None:
    email = new_email("absolute")
    await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, email, STRONG)
    for _ in range(168):
        clock.advance(minutes=59)
        await handlers.current_session(deps, issued.token)
    clock.advance(minutes=168)  # past created_at + 168 h, though never idle
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, issued.token)


async def test_issue_logs_a_user_in_without_a_password(deps: Deps) -> None:
    user = await handlers.create_user(deps, new_email("issue"), STRONG, "client")
    issued = await handlers.issue_session(deps, user.id)
    assert (await handlers.current_session(deps, issued.token)).user.id == user.id
    with pytest.raises(NotFound):
        await handlers.issue_session(deps, uuid.uuid4())
    await handlers.disable_user(deps, user.id)
    with pytest.raises(Conflict) as info:
        await handlers.issue_session(deps, user.id)
    assert info.value.code == "account_disabled"


async def test_logout_revokes_and_announces_once(deps: Deps, pool: asyncpg.Pool) -> None:
    email = new_email("logout")
    user = await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, email, STRONG)
    await handlers.logout(deps, issued.token)
    await handlers.logout(deps, issued.token)  # idempotent
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, issued.token)
    revoked = [
        e
        for e in await outbox_events(pool, "identity.session.revoked")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert [e["data"]["reason"] for e in revoked] == ["logout"]
    # Names the one session that ended, so gateways forget only that one.
    session_id = await pool.fetchval(
        "SELECT id FROM sessions WHERE token_hash = $1", hash_token(issued.token)
    )
    assert revoked[0]["data"]["session_id"] == str(session_id)
    assert issued.token not in str(revoked)
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, None)
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, "made-up-token")


# One password as two keyboards may send it: "é" as one character (NFC, most systems) or
# as "e" and a combining accent (NFD, text copied from some macOS apps); full-width
# letters from an East Asian input method.
PRECOMPOSED = "Mot de passe d'\u00e9t\u00e9 2026"
DECOMPOSED = "Mot de passe d'e\u0301te\u0301 2026"
FULL_WIDTH = "Mot de passe d'\u00e9t\u00e9 \uff12\uff10\uff12\uff16"


async def test_a_password_logs_in_however_its_characters_were_composed(deps: Deps) -> None:
    """NIST SP 800-63B: passwords are normalised (NFKC) before hashing, so the same
    password typed on another device still opens the account."""
    email = new_email("unicode")
    user = await handlers.create_user(deps, email, DECOMPOSED, "client")
    for typed in (PRECOMPOSED, DECOMPOSED, FULL_WIDTH):
        assert (await handlers.login(deps, email, typed)).user.id == user.id
    with pytest.raises(Unauthorized):
        await handlers.login(deps, email, PRECOMPOSED.lower())


async def test_a_hash_made_before_passwords_were_normalised_still_logs_in(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email = new_email("legacy")
    user = await handlers.create_user(deps, email, STRONG, "client")
    legacy = cheap_hasher().hash(DECOMPOSED)  # as the password was typed, not normalised
    await pool.execute("UPDATE users SET password_hash = $1 WHERE id = $2", legacy, user.id)
    assert (await handlers.login(deps, email, DECOMPOSED)).user.id == user.id


async def _waiting_on_a_lock(pool: asyncpg.Pool, task: asyncio.Task[User]) -> None:
    """Until ``task`` has finished or waits on a row lock in this database (the run's own
    database: no other test's backend is counted)."""
    for _ in range(400):
        if task.done():
            return
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the disable neither finished nor waited on a lock")


@pytest.mark.parametrize("opening", ["issue", "login"])
async def test_a_disable_between_the_check_and_the_new_session_ends_that_session(
    deps: Deps, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, opening: str
) -> None:
    """The accept saga's last step (issue) and a log in read the account, then write the
    session. An administrator's Disable landing in between, forced here at the write,
    must not leave a session that works, then or once the account is enabled again."""
    email = new_email(f"disable-mid-{opening}")
    user = await handlers.create_user(deps, email, STRONG, "client")
    insert_session = repo.insert_session
    disabling: list[asyncio.Task[User]] = []

    async def disabled_meanwhile(conn: Any, **row: Any) -> repo.SessionRow:
        task = asyncio.ensure_future(handlers.disable_user(deps, user.id))
        disabling.append(task)
        await _waiting_on_a_lock(pool, task)
        return await insert_session(conn, **row)

    monkeypatch.setattr(repo, "insert_session", disabled_meanwhile)
    token = None
    try:
        if opening == "issue":
            token = (await handlers.issue_session(deps, user.id)).token
        else:
            token = (await handlers.login(deps, email, STRONG)).token
    except (Conflict, Unauthorized):
        pass  # refused: the account was disabled first
    monkeypatch.setattr(repo, "insert_session", insert_session)
    assert (await disabling[0]).disabled
    await handlers.enable_user(deps, user.id)
    if token is not None:
        with pytest.raises(Unauthorized):
            await handlers.current_session(deps, token)
    live = await pool.fetchval(
        "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", user.id
    )
    assert live == 0
