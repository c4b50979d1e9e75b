"""The HTML part of every email as a mail client shows it, in Chromium: on a phone's
width nothing runs off the side (a long link in a Personal Message, a portal title or a
footer without a space), and axe-core finds nothing against WCAG 2.1 A and AA. Rendered
as the mailer renders them (tests/mailer/test_spam_score.py's emails); no network."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage

import pytest
from playwright.async_api import Browser, Page

from services.mailer.branding.domain import Branding
from tests.browser.axe import axe_violations, describe
from tests.browser.conftest import PHONE
from tests.mailer import test_spam_score as emails

pytestmark = pytest.mark.browser

LONG_LINK = (
    "https://www.figma.com/file/" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 4 + "?node-id=12-34"
)
# What an agency may well write: a link, a reference without a space.
AWKWARD = {
    "personal_message": f"Here are the drafts: {LONG_LINK}\nRef. PRJ-2026-0042_ACME_REBRAND_FINAL_V2",
    "portal_title": "ACME_REBRAND_2026_WEBSITE_RELAUNCH_AND_BRAND_GUIDELINES_PHASE_TWO",
}
BRANDING = Branding(
    agency_name="Northwind",
    footer_text="Northwind Agency · https://www.northwind-agency.example/imprint/legal-notice-and-privacy",
    logo_etag="0123456789abcdef",
    logo_type="image/png",
    logo_width=2000,
    logo_height=100,
)


def html_of(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("html",))
    assert body is not None
    return str(body.get_content())


@pytest.fixture
async def phone(chromium: Browser) -> AsyncIterator[Page]:
    context = await chromium.new_context(viewport=PHONE)
    # A mail client fetches the logo; here nothing leaves the machine.
    await context.route("**/*", lambda route: route.abort())
    yield await context.new_page()
    await context.close()


@pytest.mark.parametrize("name", sorted(emails.EMAILS))
async def test_an_email_fits_a_phone_and_reads_for_everyone(phone: Page, name: str) -> None:
    template, context = emails.EMAILS[name]
    awkward = {k: v for k, v in AWKWARD.items() if k in context or k == "portal_title"}
    messages = emails.every_email(
        only={name: (template, {**context, **awkward})},
        brandings={"built-in": Branding(), "branded": BRANDING},
    )
    for look, data in messages.items():
        await phone.set_content(html_of(data))
        wide = await phone.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth,"
            " [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => e.tagName + ' ' + (e.textContent || '').trim().slice(0, 40))]"
        )
        assert wide[0] <= wide[1], f"{look}: {wide[0]} px wide on a {wide[1]} px phone: {wide[2]}"
        violations = await axe_violations(phone)
        assert not violations, f"{look}:\n{describe(violations)}"
