"""Text one person writes and another reads (a name, a title, a message): the characters
that would make it show something other than what is stored, once for every service.

- Invisible characters are dropped: zero-width space, word joiner, BOM, soft hyphen,
  Hangul fillers, interlinear annotation marks, tag characters (but an emoji's tag
  sequence, the flag of Scotland, stays), a variation selector after nothing it can
  vary, and a zero-width (non-)joiner that joins nothing.
- What real writing needs stays: ZWNJ and ZWJ between two characters (Persian and Hindi
  names, emoji sequences such as U+1F469 U+200D U+1F4BB, woman technologist), the
  direction marks LRM, RLM and ALM (Arabic, Hebrew).
- The bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to
  U+2069) reorder the text around them: refused in one-line text (``invalid_character``); in
  text of several lines each must be closed on its own line, as a text editor would.
- Line breaks and other control characters: one-line text turns each run of them and of
  spaces into one space; text of several lines keeps line breaks (U+2028 and U+2029 are
  line breaks too) and tabs, and drops the other controls.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidInput
from .i18n import N_

ZWNJ, ZWJ = "\u200c", "\u200d"
# Embeddings and overrides (closed by PDF) and isolates (closed by PDI).
_OPENS_EMBEDDING = frozenset("\u202a\u202b\u202d\u202e")
_PDF = "\u202c"
_OPENS_ISOLATE = frozenset("\u2066\u2067\u2068")
_PDI = "\u2069"
BIDI_CONTROLS = _OPENS_EMBEDDING | _OPENS_ISOLATE | {_PDF, _PDI}
# Each step is a regular expression: a 10,000-row batch of 1,000-character messages must
# not walk them a character at a time in Python.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_INVISIBLE = re.compile(
    "[\u00ad\u115f\u1160\u17b4\u17b5\u180e\u200b\u2060-\u2064\u206a-\u206f\u3164\ufeff"
    "\uffa0\ufff9-\ufffb\U0001d173-\U0001d17a]"
)
# Tag characters: kept only as an emoji tag sequence (black flag, tags, CANCEL TAG).
_TAGS = re.compile("(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f)|[\U000e0000-\U000e007f]")
# What must stand beside something visible: the joiners and the variation selectors.
_ATTACHED = re.compile("[\u200c\u200d\ufe00-\ufe0f\U000e0100-\U000e01ef]")
# One character class (an alternation costs ten times as much): anything the steps change.
_ANY_SUSPECT = re.compile(
    _INVISIBLE.pattern[:-1] + "\U000e0000-\U000e007f" + _ATTACHED.pattern[1:-1] + "]"
)
_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_BREAKS_AND_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# What a page says in its reader's language (the JSON API and events say which character).
REORDERING_WORDS = N_(
    "This holds a hidden character that changes the order the text is shown in (a"
    " right-to-left override or a similar control). Type the text again rather than"
    " pasting it."
)


class InvalidCharacter(InvalidInput, code="invalid_character"):
    """Text holding a character that would make it show something other than it says."""

    def __init__(self, field: str, character: str, problem: str, key: str | None) -> None:
        """``field``: the words the message names it with ("The name"); ``key``: its name
        in the request ("name"), sent as ``details.field`` so a caller (a form) can tell
        which field it was without reading the message."""
        details = {"character": f"U+{ord(character):04X}"}
        super().__init__(
            f"{field} {problem} ({describe(character)}).",
            details=details if key is None else {"field": key, **details},
        )
        self.field = field
        self.character = character


def has_lone_surrogate(text: str) -> bool:
    """Half of a UTF-16 pair on its own. A body in a charset Python decodes to one
    (UTF-7's ``+2AA-``, ``\\ud800`` read as unicode_escape) holds text no JSON, no UTF-8
    and no PostgreSQL column can carry: the services' calls failed with a 500."""
    return _LONE_SURROGATE.search(text) is not None


def isolated(text: str) -> str:
    """``text`` between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE, for a sentence of
    plain text that names it (where HTML would use <bdi>); '' stays ''."""
    return f"\u2068{text}\u2069" if text else text


def describe(character: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: a character a person can't see, named."""
    return f"U+{ord(character):04X} {unicodedata.name(character, 'UNNAMED CHARACTER')}"


def _is_blank(c: str) -> bool:
    """Nothing a joiner, a selector or a tag could attach to."""
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf")


def drop_invisible(text: str) -> str:
    """``text`` without the characters that show nothing and mean nothing where they are."""
    if text.isascii() or not _ANY_SUSPECT.search(text):
        return text
    text = _TAGS.sub(lambda m: m.group(1) or "", _INVISIBLE.sub("", text))

    def attached(m: re.Match[str]) -> str:
        i, j = m.start(), m.end()
        before = text[i - 1] if i else ""
        if not before or _is_blank(before):
            return ""  # a joiner or selector after nothing (or a space) joins nothing
        if m.group() in (ZWNJ, ZWJ) and (j == len(text) or _is_blank(text[j])):
            return ""
        return m.group()

    return _ATTACHED.sub(attached, text)


def _visible(text: str) -> str:
    """'' when nothing in ``text`` shows (only spaces, marks and joiners)."""
    return text if any(not _is_blank(c) for c in text) else ""


def clean_line(raw: str, field: str, key: str | None = None) -> str:
    """One-line text (a name, a title): invisible characters dropped, each run of spaces,
    line breaks and controls one space, trimmed; '' when nothing shows.
    :class:`InvalidCharacter` when it holds a bidirectional embedding, override or isolate."""
    text = one_line(raw)
    found = _BIDI.search(text)
    if found:
        raise InvalidCharacter(
            field,
            found.group(),
            "can't contain a character that changes the order the text is shown in",
            key,
        )
    return text


def one_line(raw: str) -> str:
    """:func:`clean_line` without its check, for a value checked later by its owner."""
    text = drop_invisible(raw)
    return _visible(" ".join(_BREAKS_AND_CONTROLS.sub(" ", text).split()))


def clean_text(raw: str, field: str, key: str | None = None) -> str:
    """Text of several lines (a message, a footer): invisible characters dropped, line
    breaks as ``\\n``, tabs kept and other controls dropped, each line's trailing spaces
    and the whole text's surrounding blank lines trimmed; '' when nothing shows.
    :class:`InvalidCharacter` when an embedding, override or isolate is not closed on its
    own line, or a closing one closes nothing."""
    text = drop_invisible(_LINE_BREAKS.sub("\n", raw))
    text = _CONTROLS_BUT_LINES.sub("", text)
    lines = [line.rstrip() for line in text.split("\n")]
    for line in lines:
        check_balanced(line, field, key)
    return _visible("\n".join(lines).strip())


def check_balanced(line: str, field: str, key: str | None = None) -> None:
    """Each embedding or override closed by PDF and each isolate by PDI, nested, on one
    line (a line break ends them all, so what is left open reorders nothing after it in
    the text, but would in a sentence that shows the text)."""
    open_: list[str] = []
    for found in _BIDI.finditer(line):
        c = found.group()
        if c in _OPENS_EMBEDDING or c in _OPENS_ISOLATE:
            open_.append(c)
        elif c in (_PDF, _PDI):
            expected = _OPENS_EMBEDDING if c == _PDF else _OPENS_ISOLATE
            if not open_ or open_[-1] not in expected:
                raise InvalidCharacter(field, c, "has a character that closes nothing", key)
            open_.pop()
    if open_:
        raise InvalidCharacter(
            field,
            open_[-1],
            "has a character that changes the order the text is shown in and is not closed"
            " on its line",
            key,
        )
