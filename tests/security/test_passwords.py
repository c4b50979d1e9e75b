"""The password policy as a person meets it on the accept page, the argon2id parameters,
and the rehash at log in when the parameters rise."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from libs.common.passwords import PASSWORD_FIELD, common_passwords, password_problem
from services.identity.passwords import default_hasher
from tests.security.conftest import api, unique_email
from tests.security.flows import invite_link, new_portal
from tests.support.smtp import accept_link
from tests.support.stack import Browser, Stack, db_fetch, login

# OWASP Password Storage Cheat Sheet: argon2id with at least m=19 MiB, t=2, p=1.
OWASP_MEMORY_KIB = 19 * 1024
OWASP_TIME = 2


def test_argon2id_parameters_are_at_or_above_owasp() -> None:
    params = default_hasher()._parameters
    assert params.type is Type.ID
    assert params.memory_cost >= OWASP_MEMORY_KIB
    assert params.time_cost >= OWASP_TIME
    assert params.parallelism >= 1
    assert params.salt_len >= 16 and params.hash_len >= 32


def test_the_policy_refuses_short_and_common_passwords() -> None:
    assert password_problem("eleven-char", None) is not None
    assert password_problem("twelve-chars", None) is None
    assert len(common_passwords()) >= 1000
    for common in ("password1234", "Password1234", "qwerty123456"):
        assert password_problem(common, None) is not None, common


@pytest.mark.e2e
@pytest.mark.integration
async def test_the_accept_page_refuses_short_and_common_passwords(
    stack: Stack, admin: Browser, anonymous: Browser
) -> None:
    portal = await new_portal(admin)
    email = unique_email("policy")
    link = await invite_link(stack, admin, portal["id"], email)
    code, url, html = await anonymous.get(link)
    for password, words in (
        ("short-pass1", "at least 12 characters"),
        ("password1234", "too common"),
        ("qwertyuiop123", "too common"),
    ):
        code, url, page = await anonymous.submit(
            url, html, "Set Password", {"Password": password, "Confirm Password": password}
        )
        assert code == 422 and words in page, (password, code, page[:300])
        code, url, html = await anonymous.get(link)  # the link still works after a refusal
        assert code == 200
    assert not await db_fetch(
        stack, "SELECT 1 FROM identity.users WHERE lower(email) = lower($1)", email
    )


@pytest.mark.e2e
@pytest.mark.integration
async def test_log_in_rehashes_a_hash_made_with_weaker_parameters(stack: Stack) -> None:
    email = unique_email("legacy")
    password = "a-legacy-password-from-2019"
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "INSERT INTO identity.users (id, email, role, password_hash) "
            "VALUES ($1, $2, 'client', $3)",
            uuid.uuid4(),
            email,
            weak,
        )
        browser = await login(stack, email, password)
        await browser.close()
        stored = await conn.fetchval(
            "SELECT password_hash FROM identity.users WHERE email = $1", email
        )
    finally:
        await conn.close()
    assert stored != weak
    current = default_hasher()._parameters
    assert extract_parameters(stored) == current
    assert default_hasher().verify(stored, password)


# A password of accented letters typed as letter + combining accent ("é" as "e" and U+0301):
# 1,200 characters as sent, 600 once NFKC composes them, well within the policy's 1,024.
DECOMPOSED = "e\u0301" * 600


@pytest.mark.e2e
@pytest.mark.integration
async def test_a_long_password_the_policy_took_logs_in_as_typed(
    stack: Stack, admin: Browser, anonymous: Browser
) -> None:
    """Every form that checks a password reads as much of it as the forms that set it: the
    log in page and the accept page's log in once cut it at 1,024 characters as sent, where
    Set Password read 2,048, so a password the policy took never logged in again."""
    first, second = await new_portal(admin), await new_portal(admin)
    email = unique_email("long")
    link = await invite_link(stack, admin, first["id"], email)
    code, url, html = await anonymous.get(link)
    code, url, _ = await anonymous.submit(
        url, html, "Set Password", {"Password": DECOMPOSED, "Confirm Password": DECOMPOSED}
    )
    assert code == 200 and f"/client-portal/{first['slug']}/" in url, (code, url)

    browser = Browser(stack.public_url)
    try:
        _, url, html = await browser.get("/login")
        code, url, page = await browser.submit(
            url, html, "Log In", {"Email": email, "Password": DECOMPOSED}
        )
        assert code == 200 and "/login" not in url, (code, url, page[:300])
    finally:
        await browser.close()

    # The accept page's log in, for an invitation to a second portal.
    status, body = await api(
        admin, "POST", f"/api/v1/portals/{second['id']}/invitations", {"email": email}
    )
    assert status in (200, 201), body
    link = accept_link((await stack.sink.wait_for(email, 2))[-1])
    browser = Browser(stack.public_url)
    try:
        code, url, html = await browser.get(link)
        code, url, page = await browser.submit(url, html, "Log In", {"Password": DECOMPOSED})
        assert code == 200 and f"/client-portal/{second['slug']}/" in url, (code, url, page[:300])
    finally:
        await browser.close()


def test_no_password_longer_than_the_fields_read_passes_the_policy() -> None:
    """NFKC composes at most four code points into one, so a field cut at PASSWORD_FIELD
    characters is still too long for the policy: nothing is ever silently shortened."""
    for unit in ("x", "e\u0301", "\u03b1\u0313\u0300\u0345"):  # 1, 2 and 4 code points each
        over = unit * (PASSWORD_FIELD // len(unit) + 1)
        assert password_problem(over[:PASSWORD_FIELD], None) is not None, unit
