"""The one email address rule of every service (libs/common/email.py)."""

from __future__ import annotations

import asyncpg
import pytest

from libs.common.email import InvalidEmail, email_key, normalise_email, same_email
from libs.common.errors import InvalidInput
from tests.support.env import TestEnv


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Alice@Example.COM ", "Alice@example.com"),
        ("  Jane.Doe@Example.COM ", "Jane.Doe@example.com"),
        ("bob@example.org", "bob@example.org"),
        ("client@sub.example.org", "client@sub.example.org"),
        ("c.d+tag@Sub.Example.Net\t", "c.d+tag@sub.example.net"),
    ],
)
def test_email_is_stripped_and_domain_lower_cased(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected
    assert email_key(normalise_email(raw)) == expected.lower()


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not-an-email",
        "a@b.com\r\nBcc: victim@example.com",
        "a@b.com\nx",
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "Alice <alice@example.com>",
        '"Alice" alice@example.com',
        "two words@example.com",
        "jane@",
        "@example.com",
        "x" * 320 + "@example.com",
        "a\x00@example.com",
        "İnci@example.com",  # lower case "i̇" is two characters: keys would disagree
    ],
)
def test_bad_emails_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_email(raw)
    assert info.value.code == "invalid_email"
    assert info.value.message == "Enter a single valid email address, like name@example.com."
    assert isinstance(info.value, InvalidEmail) and info.value.reason


def test_same_email_compares_keys() -> None:
    assert same_email(" Ada@Example.com", "ada@example.COM ")
    assert not same_email("ada@example.com", "ada2@example.com")


@pytest.mark.parametrize(
    "address",
    ["ÄÖÜ@example.com", "ΣΟΦΊΑΣ@example.com", "Ǆemal@example.com", "ẞtraße@example.com"],
)
async def test_the_key_is_postgresqls_lower(migrated_schemas: TestEnv, address: str) -> None:
    """The unique indexes use lower(); the code's key must be the same string."""
    normalised = normalise_email(address)
    connection = await asyncpg.connect(migrated_schemas.database_url)
    try:
        assert await connection.fetchval("SELECT lower($1::text)", normalised) == email_key(
            normalised
        )
    finally:
        await connection.close()
