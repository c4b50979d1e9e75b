"""Pure identity rules: password policy, session expiry, tokens (the email rule and the
cursor are libs/common's: tests/common)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.errors import InvalidInput
from libs.common.passwords import MAX_PASSWORD_LENGTH, common_passwords, password_problem
from services.identity.domain import (
    SessionPolicy,
    check_password,
    hash_token,
    new_token,
)


def test_common_list_is_substantial_and_lower_case() -> None:
    words = common_passwords()
    assert len(words) >= 1000
    assert all(word == word.lower() for word in words)
    assert {"password123456", "qwertyuiop123", "iloveyou123456"} <= words


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("short1!", "at least 12"),
        ("x" * (MAX_PASSWORD_LENGTH + 1), "at most 1024"),
        ("Alice@Example.com", "email"),
        ("ALICE@EXAMPLE.COM", "email"),
        ("Password123456", "too common"),
        ("QWERTYUIOP123", "too common"),
    ],
)
def test_policy_refuses_weak_passwords(password: str, fragment: str) -> None:
    problem = password_problem(password, "alice@example.com")
    assert problem is not None and fragment in problem
    assert password not in problem  # the message never echoes the password
    with pytest.raises(InvalidInput) as info:
        check_password(password, "alice@example.com")
    assert info.value.code == "weak_password"


def test_policy_accepts_a_long_uncommon_password() -> None:
    assert password_problem("violet-harbour-73-lantern", "alice@example.com") is None
    assert password_problem("y" * MAX_PASSWORD_LENGTH, None) is None


def test_tokens_are_random_and_hashed() -> None:
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 43
    assert hash_token(first) == hash_token(first)
    assert len(hash_token(first)) == 64 and first not in hash_token(first)


def test_session_idle_and_absolute_expiry() -> None:
    policy = SessionPolicy(idle=timedelta(minutes=120), absolute=timedelta(hours=168))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    expires = policy.expires_at(start)
    assert expires == start + timedelta(hours=168)
    assert policy.is_live(
        last_seen_at=start, expires_at=expires, now=start + timedelta(minutes=119)
    )
    assert not policy.is_live(
        last_seen_at=start, expires_at=expires, now=start + timedelta(minutes=120)
    )
    late = expires - timedelta(minutes=1)
    assert not policy.is_live(last_seen_at=late, expires_at=expires, now=expires)
    assert policy.idle_expires_at(last_seen_at=late, expires_at=expires) == expires
    assert not policy.needs_touch(start, start + timedelta(seconds=59))
    assert policy.needs_touch(start, start + timedelta(seconds=60))
