"""Users on the real schema: creation, ensure (and its race), listing, disable, passwords."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from libs.common.errors import Conflict, DomainError, InvalidInput, NotFound, Unauthorized
from services.identity import handlers
from services.identity.handlers import Deps
from tests.identity.helpers import STRONG, new_email, outbox_events

pytestmark = pytest.mark.integration


async def test_create_user_announces_it_and_refuses_a_second_same_email(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email = new_email("create")
    user = await handlers.create_user(deps, email, STRONG, "client")
    assert user.email == email.rsplit("@", 1)[0] + "@example.com"
    assert user.role == "client" and not user.disabled

    events = await outbox_events(pool, "identity.user.created")
    mine = [e for e in events if e["data"]["user_id"] == str(user.id)]
    assert len(mine) == 1
    assert mine[0]["exchange"] == "events"
    assert mine[0]["data"] == {"user_id": str(user.id), "email": user.email, "role": "client"}
    body = str(mine[0])
    assert STRONG not in body and "argon2" not in body

    with pytest.raises(Conflict) as info:
        await handlers.create_user(deps, email.upper(), STRONG, "administrator")
    assert info.value.code == "email_taken"


async def test_create_user_checks_email_and_policy(deps: Deps) -> None:
    with pytest.raises(InvalidInput) as info:
        await handlers.create_user(deps, "Someone <x@example.com>", STRONG, "client")
    assert info.value.code == "invalid_email"
    with pytest.raises(InvalidInput) as info:
        await handlers.create_user(deps, new_email(), "password123456", "client")
    assert info.value.code == "weak_password"


async def test_ensure_creates_then_a_retry_of_the_same_invitation_finds_it(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email, invitation = new_email("ensure"), uuid.uuid4()
    user, created = await handlers.ensure_user(deps, email, STRONG, invitation)
    assert created and user.role == "client" and user.created_by_invitation == invitation

    again, created_again = await handlers.ensure_user(
        deps, email, "a brand new passphrase", invitation
    )
    assert not created_again and again.id == user.id
    # The retry leaves the password alone (the saga sets it only for the winner).
    issued = await handlers.login(deps, email, STRONG)
    assert issued.user.id == user.id
    with pytest.raises(Unauthorized):
        await handlers.login(deps, email, "a brand new passphrase")

    with pytest.raises(Conflict) as info:
        await handlers.ensure_user(deps, email, STRONG, uuid.uuid4())
    assert info.value.code == "account_exists"


async def test_ensure_refuses_an_account_made_another_way(deps: Deps) -> None:
    email = new_email("existing")
    await handlers.create_user(deps, email, STRONG, "client")
    with pytest.raises(Conflict) as info:
        await handlers.ensure_user(deps, email.lower(), STRONG, uuid.uuid4())
    assert info.value.code == "account_exists"


async def test_the_winners_password_ends_the_racers_session(deps: Deps, pool: asyncpg.Pool) -> None:
    """Two people hold one link. The loser's account step created the account with its
    password and logged in; the winner's password is then set (the saga's
    POST /users/{id}/password): the loser's session ends, and gateways hear of it."""
    email, invitation = new_email("racer"), uuid.uuid4()
    user, created = await handlers.ensure_user(
        deps, email, "the racer's own passphrase", invitation
    )
    assert created
    racer = await handlers.login(deps, email, "the racer's own passphrase")

    await handlers.change_password(deps, user.id, "the winner's passphrase")

    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, racer.token)
    with pytest.raises(Unauthorized):
        await handlers.login(deps, email, "the racer's own passphrase")
    events = await outbox_events(pool, "identity.session.revoked")
    assert [e["data"]["reason"] for e in events if e["data"]["user_id"] == str(user.id)] == [
        "password_changed"
    ]


async def test_sixteen_concurrent_ensures_create_exactly_one_user(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email, invitation = new_email("race"), uuid.uuid4()
    results = await asyncio.gather(
        *(handlers.ensure_user(deps, email, STRONG, invitation) for _ in range(16))
    )
    assert sum(created for _, created in results) == 1
    assert len({user.id for user, _ in results}) == 1
    count = await pool.fetchval("SELECT count(*) FROM users WHERE lower(email) = lower($1)", email)
    assert count == 1
    user_id = str(results[0][0].id)
    created_events = [
        e
        for e in await outbox_events(pool, "identity.user.created")
        if e["data"]["user_id"] == user_id
    ]
    assert len(created_events) == 1


async def test_sixteen_concurrent_ensures_from_different_invitations(deps: Deps) -> None:
    email = new_email("race2")
    results = await asyncio.gather(
        *(handlers.ensure_user(deps, email, STRONG, uuid.uuid4()) for _ in range(16)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, DomainError)]
    assert len(wins) == 1 and len(losses) == 15
    assert all(r.code == "account_exists" for r in losses)


async def test_get_lookup_and_list_with_keyset_pages(deps: Deps) -> None:
    tag = uuid.uuid4().hex[:8]
    made = [
        await handlers.create_user(deps, f"list-{tag}-{i}@example.com", STRONG, "client")
        for i in range(5)
    ]
    assert (await handlers.get_user(deps, made[0].id)).email == made[0].email
    found = await handlers.lookup_user(deps, f"  LIST-{tag}-3@EXAMPLE.com ")
    assert found.id == made[3].id
    with pytest.raises(NotFound) as info:
        await handlers.lookup_user(deps, f"nobody-{tag}@example.com")
    assert info.value.code == "user_not_found"
    with pytest.raises(NotFound):
        await handlers.get_user(deps, uuid.uuid4())

    seen: list[uuid.UUID] = []
    cursor: str | None = None
    while True:
        page, cursor = await handlers.list_users(deps, f"LIST-{tag}", cursor, 2)
        seen.extend(u.id for u in page)
        if cursor is None:
            break
    assert sorted(seen) == sorted(u.id for u in made)
    assert len(seen) == 5

    # LIKE wildcards in q are taken literally.
    page, _ = await handlers.list_users(deps, f"list_{tag}%", None, 50)
    assert page == []


async def test_the_search_finds_an_address_written_in_capitals_with_a_final_sigma(
    deps: Deps,
) -> None:
    """Addresses are lowered a character at a time, as PostgreSQL's lower() does (the
    users_email_lower index). The search lowered what was typed with Python's str.lower,
    which lowers a word-final capital sigma to U+03C2, not the U+03C3 the stored address
    lowers to: ΝΙΚΟΣ-…@example.gr, searched as written, was not found."""
    tag = uuid.uuid4().hex[:8]
    made = await handlers.create_user(deps, f"ΝΙΚΟΣ-{tag}@example.gr", STRONG, "client")
    for q in (f"ΝΙΚΟΣ-{tag}", f"νικοσ-{tag}", f"ΝΙΚΟΣ-{tag}@example.gr"):
        page, _ = await handlers.list_users(deps, q, None, 50)
        assert [u.id for u in page] == [made.id], q


async def test_disable_ends_sessions_and_announces_once(deps: Deps, pool: asyncpg.Pool) -> None:
    email = new_email("disable")
    user = await handlers.create_user(deps, email, STRONG, "client")
    issued = await handlers.login(deps, email, STRONG)

    disabled = await handlers.disable_user(deps, user.id)
    assert disabled.disabled
    with pytest.raises(Unauthorized) as info:
        await handlers.current_session(deps, issued.token)
    assert info.value.code == "no_session"
    with pytest.raises(Unauthorized) as info:
        await handlers.login(deps, email, STRONG)
    assert info.value.code == "invalid_credentials"

    again = await handlers.disable_user(deps, user.id)
    assert again.disabled
    mine = str(user.id)
    disabled_events = [
        e
        for e in await outbox_events(pool, "identity.user.disabled")
        if e["data"]["user_id"] == mine
    ]
    revoked_events = [
        e
        for e in await outbox_events(pool, "identity.session.revoked")
        if e["data"]["user_id"] == mine
    ]
    assert len(disabled_events) == 1
    assert [e["data"]["reason"] for e in revoked_events] == ["user_disabled"]
    with pytest.raises(NotFound):
        await handlers.disable_user(deps, uuid.uuid4())


async def test_change_password_ends_every_other_session(deps: Deps, pool: asyncpg.Pool) -> None:
    email = new_email("chpw")
    user = await handlers.create_user(deps, email, STRONG, "client")
    keep = await handlers.login(deps, email, STRONG)
    other = await handlers.login(deps, email, STRONG)

    await handlers.change_password(deps, user.id, "another fine passphrase", keep_token=keep.token)
    assert (await handlers.current_session(deps, keep.token)).user.id == user.id
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, other.token)

    # Without a session to keep (the accept saga, an administrator), every session ends.
    await handlers.change_password(deps, user.id, "yet another passphrase")
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, keep.token)
    revoked = [
        e["data"]["reason"]
        for e in await outbox_events(pool, "identity.session.revoked")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert revoked == ["password_changed", "password_changed"]
    with pytest.raises(InvalidInput) as info:
        await handlers.change_password(deps, user.id, email)
    assert info.value.code == "weak_password"
    with pytest.raises(NotFound):
        await handlers.change_password(deps, uuid.uuid4(), STRONG)
