from __future__ import annotations

import pytest

from libs.common.email import email_or_none
from services.gateway.domain import (
    address_key,
    api_key_matches,
    client_address,
    csrf_matches,
    flash_text,
    forwarded_hops,
    new_password_problem,
    origin_allowed,
    parse_address,
    parse_networks,
    repeated,
    retry_after,
    safe_next_path,
    window_start,
)
from services.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/ok\\..",
        "javascript:alert(1)",
        "evil.example",
        "/a\r\nSet-Cookie: x=1",
        "/\tevil",
        "",
        None,
        "///evil.example",
    ],
)
def test_unsafe_next_paths_are_refused(value: str | None) -> None:
    assert safe_next_path(value) is None


@pytest.mark.parametrize("value", ["/ok", "/client-portal/", "/client-portal/acme/?x=1", "/"])
def test_local_next_paths_are_kept(value: str) -> None:
    assert safe_next_path(value) == value


def test_csrf_tokens_must_be_present_and_equal() -> None:
    assert csrf_matches("a" * 43, "a" * 43)
    assert not csrf_matches("a" * 43, "b" * 43)
    assert not csrf_matches(None, "a")
    assert not csrf_matches("a", None)
    assert not csrf_matches("", "")
    # Any characters a header, cookie or form can carry, a byte that isn't UTF-8 included
    # (a lone surrogate, as aiohttp decodes one): refused, never an exception.
    assert not csrf_matches("\udcff" + "a" * 42, "a" * 43)
    assert not csrf_matches("a" * 43, "é" * 43)
    assert csrf_matches("é\udcff", "é\udcff")


def test_origin_must_be_ours_when_sent() -> None:
    assert origin_allowed(None, "http://localhost:8080")
    assert origin_allowed("http://localhost:8080", "http://localhost:8080")
    assert not origin_allowed("http://evil.example", "http://localhost:8080")
    assert not origin_allowed("null", "http://localhost:8080")
    assert not origin_allowed("http://localhost:8081", "http://localhost:8080")
    assert not origin_allowed("http://é.example", "http://localhost:8080")
    assert not origin_allowed("http://\udcff.example", "http://localhost:8080")
    assert origin_allowed("https://bücher.example", "https://bücher.example")


def test_public_origin_drops_the_default_port_and_keeps_another() -> None:
    assert GatewaySettings(public_url="https://cp.example.com:443/").public_origin == (
        "https://cp.example.com"
    )
    assert GatewaySettings(public_url="http://localhost:8080/").public_origin == (
        "http://localhost:8080"
    )


def test_api_key_needs_bearer_and_exact_key() -> None:
    assert api_key_matches("Bearer key", "key")
    assert not api_key_matches("Bearer nope", "key")
    assert not api_key_matches("key", "key")
    assert not api_key_matches("Bearer key", None)
    assert api_key_matches("bearer key", "key")  # the scheme in any case (RFC 9110 11.1)
    assert not api_key_matches("Bearer k\udcff", "key")  # a byte that is not UTF-8
    assert not api_key_matches("Bearer ", "key")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ann@Example.COM ", "Ann@example.com"),
        ("a@b.example", "a@b.example"),
        ("Ann <ann@example.com>", None),
        ("a@example.com, b@example.com", None),
        ("a@example.com\r\nBcc: x@example.com", None),
        ("not an email", None),
    ],
)
def test_emails_are_normalised_or_refused(raw: str, expected: str | None) -> None:
    assert email_or_none(raw) == expected  # the one rule, libs/common/email.py


def test_password_rules() -> None:
    assert new_password_problem("short", "short", "a@b.example") == (
        "password",
        "The password must be at least 12 characters long.",
    )
    assert new_password_problem("a@b.example.x", "a@b.example.x", "a@b.example.x") is not None
    assert new_password_problem("long enough pw", "different pw!!", "a@b.example") == (
        "confirm",
        "The passwords do not match.",
    )
    assert new_password_problem("long enough pw", "long enough pw", "a@b.example") is None
    assert new_password_problem("long enough \udcff", "long enough x", "a@b.example") == (
        "confirm",
        "The passwords do not match.",
    )
    # The whole policy, as identity's: a common password is refused before the round trip.
    assert new_password_problem("password1234", "password1234", "a@b.example") == (
        "password",
        "This password is too common and easy to guess. Choose a less predictable one.",
    )


def test_flash_messages_are_fixed_texts() -> None:
    assert flash_text("invitation_sent", "x@y.example") == "Invitation sent to x@y.example"
    assert flash_text("<script>") is None


def test_client_address_walks_trusted_hops_from_the_right() -> None:
    trusted = parse_networks("10.0.0.0/8, 192.0.2.1")
    xff = forwarded_hops(["203.0.113.9, 198.51.100.7", "10.1.2.3"], "x-forwarded-for")
    assert xff == ["203.0.113.9", "198.51.100.7", "10.1.2.3"]
    # The peer and 10.1.2.3 are proxies; 198.51.100.7 is the first hop that isn't.
    assert client_address("192.0.2.1", xff, trusted) == "198.51.100.7"
    # An untrusted peer's header is its own word.
    assert client_address("198.51.100.50", xff, trusted) == "198.51.100.50"
    assert client_address("192.0.2.1", xff, ()) == "192.0.2.1"
    # Nothing forwarded, or only proxies: the last one we reached.
    assert client_address("192.0.2.1", [], trusted) == "192.0.2.1"
    assert client_address("192.0.2.1", ["10.0.0.1", "10.0.0.2"], trusted) == "10.0.0.1"
    # A hop we can't read stops the walk at the last proxy we trust.
    assert client_address("192.0.2.1", ["198.51.100.7", "unknown"], trusted) == "192.0.2.1"
    assert client_address(None, xff, trusted) == "unknown"


def test_forwarded_header_hops() -> None:
    header = ['for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"']
    hops = forwarded_hops(header, "forwarded")
    assert [parse_address(h) for h in hops] == [
        parse_address("192.0.2.60"),
        parse_address("2001:db8:cafe::17"),
    ]
    assert forwarded_hops(["proto=https"], "forwarded") == [""]
    assert parse_address("198.51.100.7:8443") == parse_address("198.51.100.7")
    assert str(parse_address("::ffff:198.51.100.7")) == "198.51.100.7"
    assert parse_address("_hidden") is None and parse_address("") is None


def test_ipv6_clients_count_per_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("198.51.100.7") == "198.51.100.7"


def test_an_ipv6_address_that_carries_an_ipv4_one_counts_as_that_ipv4_client() -> None:
    """Behind NAT64/SIIT (an IPv6-only cluster reached by IPv4 clients) every IPv4 client
    arrives as 64:ff9b::<its address>, and through a Teredo relay as 2001:0:<relay>:…:
    one /64 held every one of them, so one person's failed logins locked everyone out.
    Before: both NAT64 clients were '64:ff9b::/64'."""
    nat64 = [address_key("64:ff9b::198.51.100.7"), address_key("64:ff9b::203.0.113.9")]
    assert nat64[0] != nat64[1]
    assert nat64[0] == address_key("198.51.100.7") == address_key("::ffff:0:198.51.100.7")
    # Teredo: relay 65.54.227.120, clients 198.51.100.7 and 203.0.113.9 (stored inverted)
    teredo = ["2001:0:4136:e378:8000:63bf:39cc:9bf8", "2001:0:4136:e378:8000:63bf:34ff:8ef6"]
    assert address_key(teredo[0]) == address_key("198.51.100.7")
    assert address_key(teredo[1]) == address_key("203.0.113.9")
    # 6to4: one IPv4 address's site, its /48, is one client, whichever /64 it sends from
    assert address_key("2002:c633:6407:1::1") == address_key("2002:c633:6407:2::1")
    assert address_key("2002:c633:6407:1::1") == address_key("198.51.100.7")


def test_trusted_proxies_setting_names_a_bad_range() -> None:
    assert GatewaySettings(gateway_trusted_proxies="").trusted_proxies == ()
    assert len(GatewaySettings(gateway_trusted_proxies="10.0.0.0/8,::1").trusted_proxies) == 2
    with pytest.raises(ValueError, match="not an address or CIDR range"):
        GatewaySettings(gateway_trusted_proxies="10.0.0.0/8, nginx")
    assert GatewaySettings(gateway_forwarded_header="Forwarded").gateway_forwarded_header == (
        "forwarded"
    )


@pytest.mark.parametrize(
    ("elapsed", "current", "previous", "allowed"),
    [
        (0, 3, 0, True),  # at the limit
        (0, 4, 0, False),
        (30, 2, 2, True),  # half the previous window still counts: 1 + 2
        (15, 2, 2, False),  # three quarters of it: 1.5 + 2
        (50, 1, 100, False),
    ],
)
def test_two_windows_approximate_a_sliding_one(
    elapsed: float, current: int, previous: int, allowed: bool
) -> None:
    wait = retry_after(3, 60, elapsed, current, previous)
    assert (wait == 0) is allowed
    if not allowed:
        # Waiting that long (no more hits meanwhile) lets the next one through.
        later = elapsed + wait
        if later < 60:
            assert retry_after(3, 60, later, current, previous) == 0
        else:
            assert retry_after(3, 60, later - 60, 1, current) == 0
    assert window_start(125.5, 60) == 120


def test_repeated_names_each_value_more_than_one_item_holds() -> None:
    titles = ["Acme", "Beta", "Acme", "Gamma", "Beta", "Acme"]
    assert repeated(titles) == {"Acme", "Beta"}
    assert repeated([]) == frozenset()
