"""No account enumeration: log in, forgot password and the accept pages answer a known
and an unknown email alike, and the unknown one still costs an argon2 verify."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from libs.common.errors import Unauthorized
from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from services.identity import handlers
from services.identity.domain import SessionPolicy
from services.identity.passwords import Passwords
from tests.security.conftest import unique_email
from tests.support.stack import ADMIN_EMAIL, Browser, Stack

CSRF = re.compile(r'(name="csrf_token" value=")[^"]+(")')


def normalised(html: str, *emails: str) -> str:
    html = CSRF.sub(r"\1CSRF\2", html)
    for email in emails:
        html = html.replace(email, "EMAIL")
    return html


async def _post_form(
    browser: Browser, path: str, button: str, fields: dict[str, str]
) -> tuple[int, str]:
    code, url, html = await browser.get(path)
    code, url, page = await browser.submit(url, html, button, fields)
    return code, page


@pytest.mark.e2e
@pytest.mark.integration
async def test_log_in_answers_a_known_and_an_unknown_email_alike(
    stack: Stack, anonymous: Browser
) -> None:
    unknown = unique_email("ghost")
    known_code, known = await _post_form(
        anonymous, "/login", "Log In", {"Email": ADMIN_EMAIL, "Password": "wrong-password-123"}
    )
    unknown_code, other = await _post_form(
        anonymous, "/login", "Log In", {"Email": unknown, "Password": "wrong-password-123"}
    )
    assert known_code == unknown_code == 401
    assert normalised(known, ADMIN_EMAIL) == normalised(other, unknown)


@pytest.mark.e2e
@pytest.mark.integration
async def test_forgot_password_answers_a_known_and_an_unknown_email_alike(
    stack: Stack, anonymous: Browser
) -> None:
    unknown = unique_email("ghost")
    known_code, known = await _post_form(
        anonymous, "/forgot-password", "Send Reset Link", {"Email": ADMIN_EMAIL}
    )
    unknown_code, other = await _post_form(
        anonymous, "/forgot-password", "Send Reset Link", {"Email": unknown}
    )
    assert known_code == unknown_code == 200
    assert normalised(known, ADMIN_EMAIL) == normalised(other, unknown)
    await stack.sink.wait_for(ADMIN_EMAIL)  # the known one did get its link
    assert stack.sink.to(unknown) == []


@pytest.mark.e2e
@pytest.mark.integration
async def test_accept_answers_every_unknown_token_alike(stack: Stack, anonymous: Browser) -> None:
    """A token that never existed, one of another length and one with odd characters get
    one answer; a guesser learns nothing from the shape of a reply."""
    pages = []
    for token in ("A" * 43, "x", "%00'\"<>"):
        code, _, html = await anonymous.get(f"/invitations/accept?token={token}")
        pages.append((code, normalised(html)))
    assert len(set(pages)) == 1 and pages[0][0] == 404, pages[0]
    # The reset page alike, and Email me a new link's neutral answer for any token.
    resets = []
    for token in ("A" * 43, "%00'\"<>"):
        code, _, html = await anonymous.get(f"/reset-password?token={token}")
        resets.append((code, normalised(html)))
    assert len(set(resets)) == 1 and resets[0][0] == 404, resets[0]
    answers = []
    for token in ("A" * 43, "\x00"):
        csrf = next(m.value for m in anonymous.session.cookie_jar if m.key == "cp_csrf")
        async with anonymous.session.post(
            f"{anonymous.base}/invitations/accept/new-link",
            data={"csrf_token": csrf, "token": token},
        ) as response:
            answers.append((response.status, normalised(await response.text())))
    assert len(set(answers)) == 1 and answers[0][0] == 202, answers[0]


class CountingPasswords(Passwords):
    def __init__(self, hasher: Any) -> None:
        super().__init__(hasher)
        self.verifies = 0

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verifies += 1
        return await super().verify(password_hash, password)


@pytest.mark.integration
async def test_an_unknown_email_costs_the_same_argon2_verify_as_a_known_one(
    pool_factory: Callable[[str], Any],
) -> None:
    from argon2 import PasswordHasher

    passwords = CountingPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    deps = handlers.Deps(
        db=await pool_factory("identity"),  # type: ignore[misc]
        passwords=passwords,
        sessions=SessionPolicy(idle=timedelta(minutes=120), absolute=timedelta(hours=168)),
        public_base="https://portal.example.com",
        site_name="portal.example.com",
        sealer=Sealer(DEVELOPMENT_KEY),
    )
    try:
        known = unique_email("known")
        await handlers.create_user(deps, known, "a-long-enough-password-1", "client")
        answers = []
        for email in (known, unique_email("unknown"), "not-an-email"):
            before = passwords.verifies
            with pytest.raises(Unauthorized) as info:
                await handlers.login(deps, email, "the-wrong-password-22")
            assert passwords.verifies == before + 1, email
            answers.append((info.value.code, info.value.message, info.value.status))
        assert len(set(answers)) == 1
    finally:
        passwords.close()
