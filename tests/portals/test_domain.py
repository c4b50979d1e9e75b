"""Pure portal rules: slugs, content sanitising, role resolution, closed accounts."""

from __future__ import annotations

import hashlib
import inspect
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from services.portals import domain
from services.portals.domain import (
    CONTENT_MAX,
    RENDERED_MAX,
    SLUG_MAX,
    Account,
    ContentTooLarge,
    first_free_slug,
    is_valid_slug,
    may_grant,
    render_content,
    resolve_role,
    role_for_invitation,
    sanitise_html,
    slug_candidate,
    slugify,
)


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Acme Website Redesign", "acme-website-redesign"),
        ("  Café Ünïcode — Phase #2!  ", "cafe-unicode-phase-2"),
        ("ﬁnance ①", "finance-1"),
        ("日本語", "portal"),
        ("---", "portal"),
        ("Hello   World", "hello-world"),
    ],
)
def test_slugify(title: str, slug: str) -> None:
    assert slugify(title) == slug
    assert is_valid_slug(slug)


def test_slugify_is_bounded_and_never_ends_with_a_dash() -> None:
    slug = slugify("word " * 40)
    assert len(slug) <= SLUG_MAX
    assert is_valid_slug(slug)


def test_slug_candidates_stay_within_the_limit() -> None:
    base = slugify("a" * 200)
    assert slug_candidate(base, 1) == base
    second = slug_candidate(base, 2)
    assert second.endswith("-2") and len(second) <= SLUG_MAX and is_valid_slug(second)
    assert slug_candidate("acme", 3) == "acme-3"


def test_first_free_slug() -> None:
    candidates = [slug_candidate("acme", n) for n in range(1, 5)]
    assert first_free_slug(candidates, set()) == "acme"
    assert first_free_slug(candidates, {"acme", "acme-2"}) == "acme-3"
    assert first_free_slug(candidates, set(candidates)) is None


@pytest.mark.parametrize("slug", ["", "A", "a--b", "-a", "a-", "a_b", "a b", "é", "a" * 81])
def test_invalid_slugs(slug: str) -> None:
    assert not is_valid_slug(slug)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _assert_safe(html: str) -> None:
    for tag, attrs in _tags(html):
        assert tag not in {"script", "iframe", "object", "embed", "style", "svg"}
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert not (value or "").strip().lower().startswith(("javascript:", "data:"))


EVIL_MARKDOWN = [
    "<script>alert(1)</script>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "![x](javascript:alert(1))",
    '<img src="x" onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    '<div onclick="x()">hi</div>',
    "<iframe src='https://evil.example'></iframe>",
]


@pytest.mark.parametrize("markdown", EVIL_MARKDOWN)
def test_markdown_never_renders_script_handlers_or_javascript_links(markdown: str) -> None:
    html = render_content(markdown)
    _assert_safe(html)
    assert "<script" not in html


EVIL_HTML = [
    "<p>ok</p><script>alert(1)</script>",
    '<img src="x.png" onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href=" JAVASCRIPT:alert(1)">x</a>',
    '<p onmouseover="x()" style="position:fixed">hi</p>',
    "<svg><script>alert(1)</script></svg>",
]


@pytest.mark.parametrize("html", EVIL_HTML)
def test_sanitiser_strips_what_the_renderer_might_let_through(html: str) -> None:
    clean = sanitise_html(html)
    _assert_safe(clean)
    assert "<script" not in clean
    assert "onerror" not in clean and "onmouseover" not in clean


def test_markdown_renders_common_formatting_and_safe_links() -> None:
    html = render_content(
        "# Welcome\n\nSee **the plan** and `code` at [our site](https://example.com).\n\n"
        "- one\n- two\n\n![logo](https://example.com/logo.png)"
    )
    assert "<h1>Welcome</h1>" in html
    assert "<strong>the plan</strong>" in html
    assert "<code>code</code>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer">our site</a>' in html
    assert "<li>one</li>" in html
    assert '<img src="https://example.com/logo.png" alt="logo">' in html


# One reference written out at every use: a link's address, a picture's, a title.
REFERENCE_BOMBS = [
    "[a]" * 10_000 + "\n\n[a]: /" + "u" * 29_990,
    "![a][a]" * 4_000 + "\n\n[a]: https://example.com/" + "u" * 30_000,
    "[a]" * 10_000 + '\n\n[a]: / "' + "t" * 29_000 + '"',
    "[a][]" * 12_000 + "\n\n[a]: /" + "u" * (CONTENT_MAX - 60_010),
    # Counted as written: each & of the address is five characters (&amp;) at every use.
    "[a]" * 40 + "\n\n[a]: /" + "&" * 25_000,
]


@pytest.mark.parametrize("markdown", REFERENCE_BOMBS)
def test_content_rendering_far_larger_than_written_is_refused(markdown: str) -> None:
    assert len(markdown) <= CONTENT_MAX
    with pytest.raises(ContentTooLarge) as refused:
        render_content(markdown)
    assert refused.value.code == "content_too_large" and refused.value.status == 422


def test_the_longest_plain_content_renders_within_the_bound() -> None:
    # Every character escaped to its longest entity, emphasis on every other one: a
    # constant factor, far inside the bound.
    for markdown in ('"' * CONTENT_MAX, "*a" * (CONTENT_MAX // 2), "&#" * (CONTENT_MAX // 2)):
        assert len(render_content(markdown)) < RENDERED_MAX
    # Forty uses of a 1,000-character address: as people write a page of links.
    assert render_content("[a] " * 40 + "\n\n[a]: /" + "&" * 1_000).count("&amp;") == 40_000


def test_bare_urls_are_not_linkified() -> None:
    assert "<a" not in render_content("visit https://example.com today")


@pytest.mark.parametrize(
    ("requested", "existing", "other_client", "expected"),
    [
        (None, None, False, "client"),
        (None, None, True, "sub_client"),
        ("client", None, False, "client"),
        ("client", None, True, "sub_client"),
        ("sub_client", None, False, "sub_client"),
        (None, "sub_client", False, "sub_client"),
        ("client", "sub_client", False, "client"),
        ("client", "sub_client", True, "sub_client"),
        ("sub_client", "client", False, "client"),
        (None, "client", False, "client"),
    ],
)
def test_resolve_role(requested, existing, other_client, expected) -> None:  # type: ignore[no-untyped-def]
    assert resolve_role(requested, existing, other_client) == expected


def test_role_for_invitation() -> None:
    assert role_for_invitation(True) == "sub_client"
    assert role_for_invitation(False) == "client"
    assert role_for_invitation(None) is None


def _rendering_rules() -> str:
    """What decides a page's HTML besides the libraries: the rules and the code using them."""
    return "\n".join(
        [
            repr(sorted(domain._TAGS)),
            repr(sorted((tag, sorted(names)) for tag, names in domain._ATTRIBUTES.items())),
            repr(sorted(domain._markdown.options.items())),
            repr(domain.RENDERED_MAX),
            *(
                inspect.getsource(part)
                for part in (
                    domain._escaped_length,
                    domain._written_size,
                    domain.render_content,
                    domain.sanitise_html,
                )
            ),
        ]
    )


def test_a_change_to_the_rendering_rules_comes_with_a_new_rendering() -> None:
    """Saved pages are rendered again only for a new ``RENDERER``: a change to the rules
    without a new ``RENDERING`` would leave every page saved before it as the old rules
    made it (a sanitiser fix reaching new pages only)."""
    digest = hashlib.sha256(_rendering_rules().encode()).hexdigest()[:16]
    assert (domain.RENDERING, digest) == (1, "e9347a0c4e9e5f36"), (
        "The rendering rules changed: add 1 to RENDERING in services/portals/domain.py and"
        " put the new pair here."
    )


_T = datetime(2026, 12, 1, tzinfo=UTC)


def _at(minutes: int | None) -> datetime | None:
    return None if minutes is None else _T + timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("disabled", "enabled", "erased", "accepted", "expected"),
    [
        (None, None, None, None, True),  # never heard of: an ordinary account
        (None, None, None, 5, True),
        (10, None, None, None, False),  # disabled now: no grant asked for now
        (10, None, None, 5, False),  # accepted before the Disable, heard after it
        (10, None, None, 15, False),  # accepted while disabled
        (10, 20, None, None, True),  # enabled again: a grant asked for now
        (10, 20, None, 5, False),  # accepted before the Disable: it took that portal
        (10, 20, None, 15, False),  # accepted while disabled
        (10, 20, None, 25, True),  # invited anew after the Enable
        (20, 10, None, 25, False),  # disabled again after an Enable
        (10, 10, None, None, False),  # the same instant: the Disable stands
        (None, 20, None, 5, True),  # an Enable alone (its Disable not heard yet)
        (None, None, 10, 15, False),  # erased: never again
        (10, 20, 30, 40, False),
    ],
)
def test_may_grant(  # type: ignore[no-untyped-def]
    disabled, enabled, erased, accepted, expected
) -> None:
    account = Account(disabled_at=_at(disabled), enabled_at=_at(enabled), erased_at=_at(erased))
    assert may_grant(account, _at(accepted)) is expected
    assert may_grant(None, _at(accepted)) is True
