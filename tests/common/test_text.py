"""The rule for text one person writes and another reads (libs/common/text.py): what real
writing needs stays, what shows nothing goes, what reorders the text around it is refused."""

# Real names in Arabic, Persian and Hebrew script: their letters are the point.
# ruff: noqa: RUF001

from __future__ import annotations

import unicodedata

import pytest

from libs.common.text import (
    BIDI_CONTROLS,
    InvalidCharacter,
    clean_line,
    clean_text,
    one_line,
)

# Real names and words, each with the format characters its writing needs.
REAL = [
    "مریم\u200cزاده",  # Persian: ZWNJ between the parts of a surname
    "می\u200cخواهم",  # Persian: ZWNJ inside a word
    "\u0915\u094d\u200d\u0937",  # Devanagari: half form with ZWJ after the virama
    "\u0c15\u0c4d\u200c\u0c37",  # Telugu: ZWNJ keeps the conjunct apart
    "👩\u200d💻",  # woman technologist
    "👨\u200d👩\u200d👧\u200d👦",  # family
    "🏳\ufe0f\u200d🌈",  # rainbow flag: a variation selector, then ZWJ
    "👍🏽",  # a skin tone modifier
    "❤\ufe0f",  # a variation selector after its character
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # flag of Scotland
    "שרה כהן\u200f",  # Hebrew with an RLM
    "محمد\u061c 42",  # Arabic with an ALM
    "\u0645\u062d\u0645\u062f \u0639\u0644\u064a",  # Arabic
    "Zoë Ångström-Łukasiewicz",
    "山田 太郎",
]


@pytest.mark.parametrize("name", REAL)
def test_real_names_are_kept_as_written(name: str) -> None:
    assert clean_line(name, "The name") == name
    assert clean_text(name, "The Personal Message") == name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("A\u200bda", "Ada"),  # zero-width space
        ("\ufeffAda", "Ada"),  # a BOM, as a CSV cell from Excel starts
        ("Ad\u00ada", "Ada"),  # soft hyphen
        ("A\u2060d\u2061a", "Ada"),  # word joiner, invisible function application
        ("Ada\u180e", "Ada"),  # Mongolian vowel separator
        ("\u3164Ada\u115f", "Ada"),  # Hangul fillers
        ("Ada\U000e0041\U000e0042", "Ada"),  # tag characters outside a flag
        ("\ufe0fAda", "Ada"),  # a variation selector with nothing to vary
        ("\u200dAda\u200c", "Ada"),  # joiners that join nothing
        ("Ada\u200d Lovelace", "Ada Lovelace"),  # next to a space
        ("Ada\u200d\u200dL", "AdaL"),  # doubled: each beside a format character
        ("Invoice\ufff9hidden\ufffa", "Invoicehidden"),  # interlinear annotation
        ("\u200f\u200b", ""),  # nothing that shows
    ],
)
def test_invisible_characters_go(raw: str, shown: str) -> None:
    assert clean_line(raw, "The name") == shown
    assert clean_text(raw, "The Personal Message") == shown


@pytest.mark.parametrize(
    "raw",
    [
        "Acme Support\u202e",
        "Acme \u202emoc.evil@\u202c",  # balanced, still reverses the words it holds
        "\u202aAda",
        "\u202bAda",
        "Ada\u202c",
        "\u202dAda",
        "\u2066Ada\u2069",
        "\u2067Ada",
        "\u2068Ada",
        "Ada\u2069",
    ],
)
def test_one_line_text_refuses_every_bidi_control(raw: str) -> None:
    with pytest.raises(InvalidCharacter) as refused:
        clean_line(raw, "The Title")
    assert refused.value.code == "invalid_character" and refused.value.status == 422
    control = next(c for c in raw if c in BIDI_CONTROLS)
    assert refused.value.message == (
        "The Title can't contain a character that changes the order the text is shown in"
        f" (U+{ord(control):04X} {unicodedata.name(control)})."
    )


def test_line_breaks_and_controls_are_one_space_in_one_line_text() -> None:
    raw = "Ann\r\n\r\nBcc: x\u2028y\u2029z\x85w\x1b[31m\x7f\tend "
    assert clean_line(raw, "The name") == "Ann Bcc: x y z w [31m end"
    assert one_line("\u202eAda") == "\u202eAda"  # cleaned, not checked: the owner checks


def test_text_of_several_lines_keeps_balanced_changes_of_direction_on_their_line() -> None:
    raw = "Hi \u2067שלום\u2069,\u2028\u202bעברית \u202aEnglish\u202c\u202c\r\n\tbye\x07 \n\n"
    assert clean_text(raw, "The Personal Message") == (
        "Hi \u2067שלום\u2069,\n\u202bעברית \u202aEnglish\u202c\u202c\n\tbye"
    )


@pytest.mark.parametrize(
    ("raw", "problem", "control"),
    [
        ("Pay \u202eIBAN\nthanks", "is not closed on its line", "\u202e"),
        ("Pay \u202eIBAN\u2029thanks\u202c", "is not closed on its line", "\u202e"),
        ("thanks\u202c", "closes nothing", "\u202c"),
        ("\u2067a\u202c\u2069", "closes nothing", "\u202c"),  # PDF can't close an isolate
        ("\u202ba\u2069\u202c", "closes nothing", "\u2069"),  # nor PDI an embedding
        ("\u2068a", "is not closed on its line", "\u2068"),
    ],
)
def test_text_of_several_lines_refuses_a_change_of_direction_left_open_or_closing_nothing(
    raw: str, problem: str, control: str
) -> None:
    with pytest.raises(InvalidCharacter) as refused:
        clean_text(raw, "The Footer Text")
    message = refused.value.message
    assert message.startswith("The Footer Text has a character that") and problem in message
    assert message.endswith(f"(U+{ord(control):04X} {unicodedata.name(control)}).")


def test_every_format_character_is_kept_checked_or_dropped() -> None:
    """No format character (Cf) escapes the rule unnoticed: each one alone in a line is
    dropped, refused, or one the rule keeps on purpose."""
    kept_on_purpose = {
        "\u200e",
        "\u200f",
        "\u061c",  # direction marks
        # Prepended concatenation marks and script format controls: visible signs of
        # Arabic, Syriac, Kaithi, Egyptian hieroglyphs, shorthand and music notation.
        *"\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2",
        "\U000110bd",
        "\U000110cd",
    }
    for code in range(0x110000):
        c = chr(code)
        if unicodedata.category(c) != "Cf" or c in kept_on_purpose:
            continue
        if "\U00013430" <= c <= "\U0001345f" or "\U0001bca0" <= c <= "\U0001bca3":
            continue
        if c in BIDI_CONTROLS:
            with pytest.raises(InvalidCharacter):
                clean_line(f"a{c}b", "The name")
        elif c in "\u200c\u200d":
            assert clean_line(f"a{c}b", "The name") == f"a{c}b"
        else:
            assert clean_line(f"a{c}b", "The name") == "ab", f"U+{code:04X}"
