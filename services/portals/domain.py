"""Portal rules: slugs, Markdown rendering and sanitising, who becomes the primary client,
and list cursors. Pure: no I/O."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from typing import Literal

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

from libs.common.errors import InvalidInput
from libs.common.text import clean_line

Status = Literal["active", "pending", "archived"]
Role = Literal["client", "sub_client"]

SLUG_MAX = 80
TITLE_MAX = 200
CONTENT_MAX = 100_000
SLUG_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_SLUG_RE = re.compile(SLUG_PATTERN)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Portal:
    id: uuid.UUID
    title: str
    slug: str
    content: str
    content_html: str
    status: Status
    client_id: uuid.UUID | None
    sub_client_ids: tuple[uuid.UUID, ...]
    revision: int
    created_at: datetime
    updated_at: datetime


# --- titles ---------------------------------------------------------------------------
def clean_title(raw: object) -> object:
    """A Title is one line of a page, an email's subject and its first sentence: invisible
    characters dropped, line breaks a space, and nothing that reorders the words around it
    (``invalid_character``). Anything but text is left for the model to refuse."""
    return clean_line(raw, "The Title", "title") if isinstance(raw, str) else raw


# --- slugs ----------------------------------------------------------------------------
def slugify(title: str) -> str:
    """Lower-case ASCII words joined by '-': accents are folded (NFKD), the rest dropped."""
    folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = _NON_ALNUM.sub("-", folded.lower()).strip("-")
    slug = slug[:SLUG_MAX].rstrip("-")
    return slug or "portal"


def slug_candidate(base: str, n: int) -> str:
    """The n-th choice for a generated slug: base, base-2, base-3…, always ≤ SLUG_MAX."""
    if n <= 1:
        return base
    suffix = f"-{n}"
    return base[: SLUG_MAX - len(suffix)].rstrip("-") + suffix


def first_free_slug(candidates: list[str], taken: set[str]) -> str | None:
    return next((slug for slug in candidates if slug not in taken), None)


def is_valid_slug(slug: str) -> bool:
    return len(slug) <= SLUG_MAX and _SLUG_RE.match(slug) is not None


# --- content --------------------------------------------------------------------------
# Raw HTML in Markdown is off, and whatever the renderer emits is sanitised again, so a
# portal's content can't carry script, event handlers or javascript: links.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
}


# Markdown can say far more than it is long: a link reference defined once ("[a]: address")
# is written out again at every use ("[a]"), so 59,998 characters (5,000 uses, "[a][a]", of one
# 29,990-character address) rendered 150,000,000 characters of HTML, held in memory, stored
# and sent with every view of the page. The text and addresses a page would carry, escaped
# as written, are counted from the parse (cheap: every use shares its definition's
# address, counted once) before any is written out. A million is 10 times the longest
# Content and more than any real page needs (tags come on top: a constant factor).
RENDERED_MAX = 1_000_000
CONTENT_TOO_LARGE = (
    "The Content would make a page too large to show: a link or picture defined once is used"
    " too many times. Use it fewer times, or give it a shorter address."
)


class ContentTooLarge(InvalidInput, code="content_too_large"):
    """Content whose page would be larger than RENDERED_MAX."""


def _escaped_length(text: str, seen: dict[str, int]) -> int:
    """``text``'s length as HTML writes it (markdown-it escapes & < > "), measured once
    however many tokens share it. Keyed by the string itself, not its id(): an attribute
    value that isn't a string is measured as a temporary ``str``, whose id the next one
    may reuse. A string's hash is kept on it, so a reference repeated 5,000 times is
    hashed once."""
    found = seen.get(text)
    if found is None:
        found = seen[text] = (
            len(text)
            + 4 * text.count("&")
            + 3 * (text.count("<") + text.count(">"))
            + 5 * text.count('"')
        )
    return found


def _written_size(tokens: list[Token], seen: dict[str, int]) -> int:
    """The text and attribute values the renderer writes out for ``tokens``: an inline
    token's (or a picture's) children, not its source."""
    size = 0
    for token in tokens:
        if token.children is not None:
            size += _written_size(token.children, seen)
        else:
            size += _escaped_length(token.content, seen)
        size += sum(_escaped_length(str(value), seen) for value in token.attrs.values())
    return size


def render_content(markdown: str) -> str:
    env: dict[str, object] = {}
    tokens = _markdown.parse(markdown, env)
    if _written_size(tokens, {}) > RENDERED_MAX:
        raise ContentTooLarge(CONTENT_TOO_LARGE)
    return sanitise_html(_markdown.renderer.render(tokens, _markdown.options, env))


def sanitise_html(html: str) -> str:
    return str(
        nh3.clean(
            html,
            tags=_TAGS,
            attributes=_ATTRIBUTES,
            url_schemes={"http", "https", "mailto"},
            link_rel="noopener noreferrer",
            strip_comments=True,
        )
    )


# What wrote a page's stored HTML: our rules (bump RENDERING with any change to the tags,
# attributes, options or code above that changes what a page holds; tests/portals/
# test_domain.py fails until it is) and the libraries' versions, which may change it too (a
# sanitiser fix among them). A page written by anything else is rendered again.
RENDERING = 1
RENDERER = f"{RENDERING}; markdown-it-py {version('markdown-it-py')}; nh3 {version('nh3')}"


# --- access ---------------------------------------------------------------------------
def resolve_role(requested: Role | None, existing: Role | None, has_other_client: bool) -> Role:
    """The role a grant ends with.

    A grant never demotes: the primary client stays client. ``None`` (auto) keeps an
    existing role, else makes a primary client when the portal has none. An explicit
    ``client`` while someone else is the client becomes ``sub_client``: the person still
    gets in, and replacing the primary client stays an explicit admin action."""
    if existing == "client":
        return "client"
    if requested == "sub_client":
        return "sub_client"
    if requested is None and existing == "sub_client":
        return "sub_client"
    return "sub_client" if has_other_client else "client"


def role_for_invitation(sub_client: bool | None) -> Role | None:
    if sub_client is None:
        return None
    return "sub_client" if sub_client else "client"


# --- closed accounts ------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """What portals heard of an account from identity: the occurred_at (identity's clock)
    of its latest identity.user.disabled, .enabled and .erased, each None if never heard."""

    disabled_at: datetime | None
    enabled_at: datetime | None
    erased_at: datetime | None

    @property
    def closed(self) -> bool:
        """Erased, or disabled and not enabled again since."""
        if self.erased_at is not None:
            return True
        if self.disabled_at is None:
            return False
        return self.enabled_at is None or self.enabled_at <= self.disabled_at


def may_grant(account: Account | None, accepted_at: datetime | None) -> bool:
    """Whether a grant may put the account on a portal. A disabled account leaves every
    portal and an enable gives none back, so the account must be open now, and an
    acceptance (``accepted_at``, invitations' clock) heard late must have been made after
    the latest enable: one made before it was taken away by the Disable that came first,
    or was made while the account was disabled. The accept saga's own grant names its
    acceptance too (a step slow or retried across a Disable and an Enable). ``None``: a
    grant asked for now (the editor)."""
    if account is None:
        return True
    if account.closed:
        return False
    if accepted_at is None or account.disabled_at is None or account.enabled_at is None:
        return True
    return accepted_at >= account.enabled_at
