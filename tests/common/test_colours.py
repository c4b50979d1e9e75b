"""libs/common/colours.py: WCAG 2 contrast, and the shade of an accent that stays readable."""

from __future__ import annotations

import pytest

from libs.common.colours import MIN_CONTRAST, contrast_ratio, darker, readable_on

# app.css --bg
PAGE_BACKGROUND = "#f0f0f1"


def test_contrast_ratio_matches_the_wcag_reference_values() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("#767676", "#f0f0f1") == pytest.approx(3.99, abs=0.01)


def test_a_readable_colour_is_kept() -> None:
    assert readable_on("#1a5fb4", PAGE_BACKGROUND) == "#1a5fb4"


@pytest.mark.parametrize("accent", ["#767676", "#e2001a", "#d6336c", "#0a7f8c"])
def test_the_least_darker_shade_that_reads_on_the_background(accent: str) -> None:
    shade = readable_on(accent, PAGE_BACKGROUND)
    assert contrast_ratio(shade, PAGE_BACKGROUND) >= MIN_CONTRAST
    steps = next(n for n in range(101) if darker(accent, n / 100) == shade)
    assert steps > 0
    assert contrast_ratio(darker(accent, (steps - 1) / 100), PAGE_BACKGROUND) < MIN_CONTRAST
