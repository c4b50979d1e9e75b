from __future__ import annotations

import pytest

from services.gateway.domain import (
    SlidingWindow,
    api_key_matches,
    csrf_matches,
    flash_text,
    normalise_email,
    origin_allowed,
    password_problem,
    safe_next_path,
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


def test_origin_must_be_ours_when_sent() -> None:
    assert origin_allowed(None, "http://localhost:8080")
    assert origin_allowed("http://localhost:8080", "http://localhost:8080")
    assert not origin_allowed("http://evil.example", "http://localhost:8080")
    assert not origin_allowed("null", "http://localhost:8080")
    assert not origin_allowed("http://localhost:8081", "http://localhost:8080")


def test_public_origin_drops_default_port_and_path() -> None:
    assert GatewaySettings(public_url="https://cp.example.com/").public_origin == (
        "https://cp.example.com"
    )
    assert GatewaySettings(public_url="http://localhost:8080/x").public_origin == (
        "http://localhost:8080"
    )


def test_api_key_needs_bearer_and_exact_key() -> None:
    assert api_key_matches("Bearer key", "key")
    assert not api_key_matches("Bearer nope", "key")
    assert not api_key_matches("key", "key")
    assert not api_key_matches("Bearer key", None)


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
    assert normalise_email(raw) == expected


def test_password_rules() -> None:
    assert password_problem("short", "short", "a@b.example") is not None
    assert password_problem("a@b.example.x", "a@b.example.x", "a@b.example.x") is not None
    assert password_problem("long enough pw", "different pw!!", "a@b.example") == (
        "The passwords do not match."
    )
    assert password_problem("long enough pw", "long enough pw", "a@b.example") is None


def test_sliding_window_blocks_then_forgets() -> None:
    now = [1000.0]
    window = SlidingWindow(limit=2, window=60, clock=lambda: now[0])
    assert window.hit("k") == 0
    assert window.hit("k") == 0
    assert window.hit("k") > 0
    assert window.hit("other") == 0
    now[0] += 61
    assert window.hit("k") == 0


def test_flash_messages_are_fixed_texts() -> None:
    assert flash_text("invitation_sent", "x@y.example") == "Invitation sent to x@y.example"
    assert flash_text("<script>") is None
