"""Branding rules: the WCAG AA contrast of white button text on the accent, and logo
checks on real image bytes made with Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.mailer.branding.domain import (
    MAX_LOGO_BYTES,
    BrandingRefused,
    check_accent,
    check_footer,
    check_reply_to,
    contrast_ratio,
    prepare_logo,
)


def image_bytes(kind: str, size: tuple[int, int] = (120, 40), **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 90, 180)).save(out, format=kind, **save)
    return out.getvalue()


def test_contrast_ratio_matches_the_wcag_reference_values() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#ffffff", "#ffffff") == pytest.approx(1.0)
    # The darkest grey that still passes AA on white, and the one just lighter.
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def test_an_accent_white_text_can_be_read_on_is_kept_lower_cased() -> None:
    assert check_accent("#1A5FB4") == "#1a5fb4"
    assert check_accent(" #767676 ") == "#767676"
    assert check_accent("") == ""


@pytest.mark.parametrize("colour", ["#777777", "#ffcc00", "#ffffff"])
def test_an_accent_failing_wcag_aa_is_refused_with_its_ratio(colour: str) -> None:
    with pytest.raises(BrandingRefused) as refused:
        check_accent(colour)
    assert refused.value.field == "accent_colour"
    assert "contrast ratio" in refused.value.message
    assert "4.5:1" in refused.value.message


@pytest.mark.parametrize("colour", ["2563eb", "#2563e", "#2563ebff", "blue", "#zzzzzz"])
def test_an_accent_that_is_not_rrggbb_is_refused(colour: str) -> None:
    with pytest.raises(BrandingRefused, match="six hex digits"):
        check_accent(colour)


def test_reply_to_is_one_plain_address() -> None:
    assert check_reply_to(" Hello@Agency.Example ") == "Hello@agency.example"
    for bad in ("two@a.example, b@b.example", "Name <a@b.example>", "a@b.example\r\nBcc: x@y"):
        with pytest.raises(BrandingRefused):
            check_reply_to(bad)


def test_a_reply_to_at_an_internationalised_domain_is_kept_in_its_ascii_form() -> None:
    # It goes into an ASCII header; the domain's IDNA form is the same mailbox. It was
    # refused as "not one email address", and an agency at such a domain had no Reply-To.
    assert check_reply_to("hallo@Bücher.example") == "hallo@xn--bcher-kva.example"
    with pytest.raises(BrandingRefused, match="one email address"):
        check_reply_to("büro@example.com")  # only SMTPUTF8 carries it


def test_footer_text_keeps_lines_and_is_bounded() -> None:
    assert check_footer("  Acme Ltd\r\n1 High Street  \n") == "Acme Ltd\n1 High Street"
    with pytest.raises(BrandingRefused, match="500"):
        check_footer("x" * 501)


def test_a_png_is_re_encoded_as_png() -> None:
    logo = prepare_logo(image_bytes("PNG"))
    assert logo.content_type == "image/png"
    assert (logo.width, logo.height) == (120, 40)
    assert logo.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(logo.etag) == 32


def test_a_jpeg_loses_its_metadata() -> None:
    exif = Image.Exif()
    exif[0x010E] = "secret location notes"  # ImageDescription
    original = image_bytes("JPEG", exif=exif.tobytes())
    assert b"secret location notes" in original
    logo = prepare_logo(original)
    assert logo.content_type == "image/jpeg"
    assert b"secret location notes" not in logo.content
    with Image.open(io.BytesIO(logo.content)) as again:
        assert not again.getexif()


def test_bytes_after_the_picture_are_dropped() -> None:
    logo = prepare_logo(image_bytes("PNG") + b"<script>alert(1)</script>")
    assert b"<script>" not in logo.content


def test_a_gif_is_refused() -> None:
    with pytest.raises(BrandingRefused, match="PNG or JPEG"):
        prepare_logo(image_bytes("GIF"))


def test_a_text_file_named_png_is_refused() -> None:
    with pytest.raises(BrandingRefused, match="PNG or JPEG"):
        prepare_logo(b"this is not a picture, whatever its name says\n")


def test_a_png_header_with_a_broken_body_is_refused() -> None:
    with pytest.raises(BrandingRefused, match="damaged"):
        prepare_logo(image_bytes("PNG")[:40])


def test_a_file_over_1_mb_is_refused() -> None:
    big = image_bytes("PNG") + b"\0" * MAX_LOGO_BYTES
    with pytest.raises(BrandingRefused, match="too big"):
        prepare_logo(big)


def test_a_picture_over_2000_pixels_a_side_is_refused() -> None:
    with pytest.raises(BrandingRefused, match="2001 by 10 pixels"):
        prepare_logo(image_bytes("PNG", (2001, 10)))
