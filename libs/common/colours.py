"""WCAG 2 colour arithmetic on ``#rrggbb``: luminance and contrast (the mailer refuses an
Accent Colour white text can't be read on), and the darker shades of an accent the pages use
(the gateway's theme: hover, and text that stays readable on the pages' grey)."""

from __future__ import annotations

# WCAG 2 AA for normal text.
MIN_CONTRAST = 4.5


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb``."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _linear(r) + 0.7152 * _linear(g) + 0.0722 * _linear(b)


def contrast_ratio(first: str, second: str) -> float:
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def darker(colour: str, amount: float = 0.2) -> str:
    """``#rrggbb`` mixed with black (the hover shade of a button)."""
    channels = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c * (1 - amount)):02x}" for c in channels)


def readable_on(colour: str, background: str, minimum: float = MIN_CONTRAST) -> str:
    """``colour`` itself if text in it on ``background`` reaches ``minimum``, else the
    least darker shade of it that does (black at the end, for a light background)."""
    for step in range(101):
        shade = darker(colour, step / 100)
        if contrast_ratio(shade, background) >= minimum:
            return shade
    return "#000000"
