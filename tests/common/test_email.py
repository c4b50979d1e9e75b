"""The one email address rule of every service (libs/common/email.py)."""

from __future__ import annotations

import random

import asyncpg
import email_validator
import pytest

from libs.common.email import (
    InvalidEmail,
    _full,
    _plain,
    ascii_address,
    email_key,
    email_or_none,
    normalise_email,
    same_email,
    typed_email_key,
)
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


def test_an_internationalised_domain_has_an_ascii_form_and_a_local_part_has_none() -> None:
    assert ascii_address("ada@example.com") == "ada@example.com"
    assert ascii_address("Jane@bücher.de") == "Jane@xn--bcher-kva.de"
    assert ascii_address("jürgen@example.de") is None
    assert ascii_address("jürgen@bücher.de") is None


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


# --- the fast path for plain addresses, against the validator --------------------------
def _agree(value: str) -> str | None:
    """The fast path's answer, after checking it against the validator's: never an
    address the validator refuses, never a different spelling."""
    fast = _plain(value)
    try:
        full = _full(value)
    except InvalidEmail:
        assert fast is None, value
        return None
    assert fast is None or fast == full, value
    return fast


def _long(local: int, domain: int) -> str:
    """An address with a local part and a domain of these lengths (labels of 62)."""
    return "x" * local + "@" + (("a" * 62 + ".") * 4 + "com")[-domain:]


ATEXT_SPECIALS = "!#$%&'*+-/=?^_`{|}~"
EDGE_CASES = [
    "Jane.Doe+x@Example.COM",
    "a@b.co",
    "A@EXAMPLE.COM",
    "a@B.Example.Org",
    "postmaster@example.com",
    "PostMaster@example.com",
    "Abuse@Example.com",
    "INFO@example.com",
    "info.x@example.com",
    "a@b.test",
    "a@B.TEST",
    "a@test",
    "a@localhost",
    "a@x.local",
    "a@local",
    "a@x.invalid",
    "a@example.onion",
    "a@x.arpa",
    "a@in-addr.arpa",
    "a@xn--bcher-kva.example",
    "a@XN--bcher-kva.example",
    "a@xn--.example",
    "a@ab--cd.example",
    "a@a--b.example",
    "a@a-b.example",
    "a@a-.example",
    "a@-a.example",
    "a@a.-example",
    "a@a.example-",
    "a@example.x-y",
    "a@example.123",
    "a@example.c0m",
    "a@example.co1",
    "a@1.2.3.4",
    "a@123.com",
    "a@example.c",
    "a@example",
    "a@EXAMPLE",
    ".a@example.com",
    "a.@example.com",
    "a..b@example.com",
    "a@.example.com",
    "a@example.com.",
    "a@example..com",
    "a@exa_mple.com",
    "a@b@example.com",
    "@example.com",
    "a@",
    "a",
    '"ab"@example.com',
    '"a.b"@example.com',
    '"a b"@example.com',
    "a@[127.0.0.1]",
    "a@[IPv6:::1]",
    "a(b)@example.com",
    "a[b]@example.com",
    "a\\b@example.com",
    "a:b@example.com",
    _long(64, 11),
    _long(65, 11),
    _long(64, 189),
    _long(64, 190),
    _long(1, 252),
    _long(1, 253),
    _long(1, 254),
    "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com",
    "a@example." + "b" * 63,
    "a@example." + "b" * 64,
    *(f"a{c}b@example.com" for c in ATEXT_SPECIALS),
    *(f"{c}@example.com" for c in ATEXT_SPECIALS),
    *(f"{c}.{c}@example.com" for c in ATEXT_SPECIALS),
    ATEXT_SPECIALS + "@example.com",
]
# email-validator's settings a program may change; the fast path must stay right.
VALIDATOR_SETTINGS = [
    {},
    {"TEST_ENVIRONMENT": True},
    {"GLOBALLY_DELIVERABLE": False},
    {"STRICT": True},
    {"ALLOW_QUOTED_LOCAL": True, "ALLOW_DOMAIN_LITERAL": True, "ALLOW_EMPTY_LOCAL": True},
    {"SPECIAL_USE_DOMAIN_NAMES": [*email_validator.SPECIAL_USE_DOMAIN_NAMES, "example.com"]},
]


@pytest.mark.parametrize("settings", VALIDATOR_SETTINGS)
def test_the_fast_path_agrees_with_the_validator_on_edge_cases(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object]
) -> None:
    for name, value in settings.items():
        monkeypatch.setattr(email_validator, name, value)
    for value in EDGE_CASES:
        _agree(value)


@pytest.mark.parametrize(
    ("value", "fast", "full"),
    [
        (_long(64, 11), True, True),
        (_long(65, 11), False, True),  # longer than 64 only in the validator's strict mode
        ("a@" + "b" * 63 + ".com", True, True),
        ("a@" + "b" * 64 + ".com", False, False),
        (_long(64, 189), True, True),  # 254 characters
        (_long(64, 190), False, False),
        (_long(1, 252), True, True),  # 254
        (_long(1, 253), False, False),  # the domain's limit, but 255 in all
        (_long(1, 254), False, False),
    ],
)
def test_the_fast_path_at_the_length_limits(value: str, fast: bool, full: bool) -> None:
    assert (_agree(value) is not None) is fast
    assert (email_or_none(value) is not None) is full


def test_the_fast_path_agrees_with_the_validator_on_random_strings() -> None:
    rng = random.Random(20240601)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    tricky = letters + "0123456789" + ".-_+@" + ATEXT_SPECIALS
    special_tlds = ["test", "local", "localhost", "invalid", "onion", "arpa", "example"]

    def part(alphabet: str) -> str:
        size = rng.choice([1, 2, 3, 5, 8, 12]) if rng.random() < 0.9 else rng.randint(60, 70)
        if rng.random() < 0.1:  # a long run of one character
            return rng.choice(alphabet) * size
        return "".join(rng.choice(alphabet) for _ in range(size))

    accepted = refused = 0
    for _ in range(20_000):
        local = part(letters + "0123456789.+_-" if rng.random() < 0.7 else tricky)
        labels = [part(letters + "0123456789-") for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.15:
            labels.append(rng.choice(special_tlds))
        value = local + "@" + ".".join(labels)
        if rng.random() < 0.3:  # a character of the tricky alphabet anywhere
            at = rng.randrange(len(value) + 1)
            value = value[:at] + rng.choice(tricky) + value[at:]
        if _agree(value) is None:
            refused += 1
        else:
            accepted += 1
    # Both sides of the comparison are well exercised.
    assert accepted > 4_000 and refused > 4_000, (accepted, refused)


def test_the_fast_path_takes_common_addresses() -> None:
    for raw, expected in [
        ("Jane.Doe+x@Example.COM", "Jane.Doe+x@example.com"),
        (" bob@example.org ", "bob@example.org"),
        ("c.d+tag@Sub.Example.Net", "c.d+tag@sub.example.net"),
        ("o'neil_1@mail.example.co.uk", "o'neil_1@mail.example.co.uk"),
    ]:
        assert _plain(raw.strip()) == expected
        assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    "typed",
    [
        " victim@example.com ",
        "victim@\uff45xample.com",  # a full-width e
        "victim@example\u3002com",  # an ideographic full stop
        "victim@EXAMPLE\uff0ecom",
    ],
)
def test_every_spelling_identity_logs_in_as_one_account_has_its_key(typed: str) -> None:
    """The rate limits count failed logins by this key: identity finds the account by the
    normalised address, so a spelling with another email_key was a fresh count."""
    assert normalise_email(typed) == "victim@example.com"
    assert typed_email_key(typed) == email_key("victim@example.com")


def test_what_is_no_address_is_keyed_as_typed() -> None:
    assert typed_email_key(" Not An Address ") == "not an address"
