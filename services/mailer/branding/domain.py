"""Branding rules: what an agency name, accent colour, Reply-To, footer and logo may be.
Pure: no I/O (the logo is decoded and re-encoded in memory)."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, UnidentifiedImageError

from libs.common.colours import MIN_CONTRAST, contrast_ratio
from libs.common.email import ascii_address
from libs.common.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGE_MESSAGE,
    TIME_ZONE_MESSAGE,
    is_language,
    is_time_zone,
)
from libs.common.text import InvalidCharacter, clean_line, clean_text

from ..domain import InvalidAddress, normalise_address

MAX_NAME_LENGTH = 100
MAX_FOOTER_LENGTH = 500
# The upload as sent, and the picture's size: a logo, not a photograph.
MAX_LOGO_BYTES = 1024 * 1024
MAX_LOGO_SIDE = 2000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


class BrandingRefused(ValueError):
    """A value a person typed or uploaded can't be used; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Branding:
    """What emails and pages show. Empty strings mean "not set": the site's host name (and
    MAIL_FROM's display name) stand in for the agency name, the built-in colour for the
    accent, no Reply-To, no footer."""

    agency_name: str = ""
    accent_colour: str = ""
    reply_to: str = ""
    footer_text: str = ""
    logo_etag: str = ""
    logo_type: str = ""
    # The logo's size in pixels; 0 when not known (a logo saved before they were kept).
    logo_width: int = 0
    logo_height: int = 0
    # The agency's Language (emails whose job names none) and Time Zone (dates in emails).
    # Empty: not saved, the MAILER_DEFAULT_LANGUAGE / MAILER_TIME_ZONE values stand.
    default_locale: str = ""
    time_zone: str = ""

    def with_changes(self, **changes: Any) -> Branding:
        return replace(self, **changes)


def check_default_locale(value: str) -> str:
    if not is_language(value):
        raise BrandingRefused("default_locale", LANGUAGE_MESSAGE)
    return value


def check_time_zone(value: str) -> str:
    if not is_time_zone(value):
        raise BrandingRefused("time_zone", TIME_ZONE_MESSAGE)
    return value


def resolved(branding: Branding, first: Branding) -> Branding:
    """The saved branding with the variables' Language and Time Zone where none is saved."""
    return replace(
        branding,
        default_locale=branding.default_locale or first.default_locale or DEFAULT_LANGUAGE,
        time_zone=branding.time_zone or first.time_zone or "UTC",
    )


@dataclass(frozen=True)
class Logo:
    content: bytes
    content_type: str
    etag: str
    width: int
    height: int


def check_accent(raw: str) -> str:
    """``#rrggbb`` (lower-cased) on which white button text passes WCAG AA; '' unsets."""
    value = raw.strip()
    if not value:
        return ""
    if not COLOUR.fullmatch(value):
        raise BrandingRefused(
            "accent_colour", "Enter the Accent Colour as # and six hex digits, like #1a5fb4."
        )
    value = value.lower()
    ratio = contrast_ratio(value, "#ffffff")
    if ratio < MIN_CONTRAST:
        raise BrandingRefused(
            "accent_colour",
            f"White button text on {value} has a contrast ratio of {ratio:.2f}:1; WCAG AA"
            f" needs at least {MIN_CONTRAST}:1. Choose a darker colour.",
        )
    return value


def check_agency_name(raw: str) -> str:
    """One line: the From line's display name and the emails' sign-off, which must show
    what they hold (libs/common/text.py)."""
    try:
        value = clean_line(raw, "The Agency Name", "agency_name")
    except InvalidCharacter as exc:
        raise BrandingRefused("agency_name", exc.message) from None
    if len(value) > MAX_NAME_LENGTH:
        raise BrandingRefused(
            "agency_name", f"Keep the Agency Name to {MAX_NAME_LENGTH} characters or fewer."
        )
    return value


def check_reply_to(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    try:
        address = normalise_address(value)
        # ASCII only: it goes into a header as it is. An internationalised domain in its
        # IDNA form (the same mailbox); a local part only SMTPUTF8 carries can't be.
        written = ascii_address(address)
        if written is None:
            raise InvalidAddress("the part before the @ is not ASCII")
        return written
    except InvalidAddress:
        raise BrandingRefused(
            "reply_to", "Enter the Reply-To as one email address, like hello@agency.example."
        ) from None


def check_footer(raw: str) -> str:
    """Plain text (escaped wherever it is shown); line breaks kept, at most 500 characters."""
    value = "\n".join(line.rstrip() for line in raw.replace("\r\n", "\n").split("\n")).strip()
    if any(ord(c) < 32 and c != "\n" for c in value):
        raise BrandingRefused("footer_text", "The Footer Text can't contain control characters.")
    try:
        value = clean_text(value, "The Footer Text", "footer_text")
    except InvalidCharacter as exc:
        raise BrandingRefused("footer_text", exc.message) from None
    if len(value) > MAX_FOOTER_LENGTH:
        raise BrandingRefused(
            "footer_text", f"Keep the Footer Text to {MAX_FOOTER_LENGTH} characters or fewer."
        )
    return value


# Each text field of Settings → Branding, and the check its value passes.
TEXT_CHECKS: dict[str, Callable[[str], str]] = {
    "agency_name": check_agency_name,
    "accent_colour": check_accent,
    "reply_to": check_reply_to,
    "footer_text": check_footer,
    "default_locale": check_default_locale,
    "time_zone": check_time_zone,
}


def logo_kind(content: bytes) -> str | None:
    """'PNG' or 'JPEG' by the file's first bytes (never its name or declared type)."""
    if content.startswith(PNG_MAGIC):
        return "PNG"
    if content.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


def prepare_logo(content: bytes) -> Logo:
    """Check and re-encode an uploaded logo: PNG or JPEG by its magic bytes, at most
    MAX_LOGO_BYTES and MAX_LOGO_SIDE pixels a side, decoded and written again so that no
    metadata (EXIF, GPS, comments) and nothing after the picture survives. CPU work: run
    it off the event loop."""
    if not content:
        raise BrandingRefused("logo", "Choose a PNG or JPEG file for the Logo.")
    if len(content) > MAX_LOGO_BYTES:
        raise BrandingRefused("logo", f"The Logo is too big: at most {MAX_LOGO_BYTES // 1024} KB.")
    kind = logo_kind(content)
    if kind is None:
        raise BrandingRefused("logo", "The Logo must be a PNG or JPEG image.")
    try:
        with Image.open(io.BytesIO(content), formats=[kind]) as image:
            width, height = image.size
            if width > MAX_LOGO_SIDE or height > MAX_LOGO_SIDE:
                raise BrandingRefused(
                    "logo",
                    f"The Logo is {width} by {height} pixels: at most {MAX_LOGO_SIDE} a side.",
                )
            image.load()
            out = io.BytesIO()
            if kind == "PNG":
                keep = (
                    image
                    if image.mode in ("RGB", "RGBA", "L", "LA", "P")
                    else image.convert("RGBA")
                )
                keep.save(out, format="PNG", optimize=True)
                content_type = "image/png"
            else:
                keep = image if image.mode in ("RGB", "L") else image.convert("RGB")
                keep.save(out, format="JPEG", quality=90)
                content_type = "image/jpeg"
    except BrandingRefused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BrandingRefused(
            "logo", "The Logo file is damaged or not a PNG or JPEG image."
        ) from None
    encoded = out.getvalue()
    etag = hashlib.sha256(encoded).hexdigest()[:32]
    return Logo(encoded, content_type, etag, width, height)
