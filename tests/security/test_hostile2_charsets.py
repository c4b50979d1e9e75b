"""Bodies in a charset Python decodes to a lone surrogate (half a UTF-16 pair: UTF-7's
``+2AA-``, ``\\ud800`` read as unicode_escape), which no JSON, no UTF-8 and no PostgreSQL
text can carry: a form or a CSV file that declares one is refused as unreadable, never
a 500."""

from __future__ import annotations

import pytest

from tests.security.conftest import api, cookie
from tests.security.flows import new_portal
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FORM = "application/x-www-form-urlencoded"
# (charset, how that charset spells U+D800)
SURROGATES = [
    ("utf-7", b"+2AA-"),
    ("unicode_escape", b"\\ud800"),
    ("raw_unicode_escape", b"\\ud800"),
]


@pytest.mark.parametrize(("charset", "surrogate"), SURROGATES)
async def test_a_form_whose_charset_makes_a_lone_surrogate_is_a_clear_400(
    stack: Stack, admin: Browser, anonymous: Browser, charset: str, surrogate: bytes
) -> None:
    portal = await new_portal(admin)
    await anonymous.get("/login")
    posts = [
        (admin, f"/admin/portals/{portal['id']}", b"title=A" + surrogate + b"&status=active"),
        (admin, "/admin/settings/branding", b"agency_name=A" + surrogate),
        (anonymous, "/login", b"email=a" + surrogate + b"@example.com&password=x"),
        (anonymous, "/forgot-password", b"email=a" + surrogate + b"@example.com"),
    ]
    for browser, path, fields in posts:
        body = fields + b"&csrf_token=" + (cookie(browser, "cp_csrf") or "").encode()
        headers = {"Content-Type": f"{FORM}; charset={charset}", "Origin": stack.public_url}
        async with browser.session.post(
            browser.base + path, data=body, headers=headers, allow_redirects=False
        ) as response:
            page = await response.text()
            assert response.status == 400, (path, response.status, page[:200])
            assert "The form could not be read" in page
    # A part of a multipart form, likewise.
    token = (cookie(admin, "cp_csrf") or "").encode()
    multipart = (
        b'--X\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + token + b"\r\n"
        b'--X\r\nContent-Disposition: form-data; name="agency_name"\r\n'
        b"Content-Type: text/plain; charset="
        + charset.encode()
        + b"\r\n\r\nA"
        + surrogate
        + b"\r\n--X--\r\n"
    )
    async with admin.session.post(
        admin.base + "/admin/settings/branding",
        data=multipart,
        headers={"Content-Type": "multipart/form-data; boundary=X", "Origin": stack.public_url},
        allow_redirects=False,
    ) as response:
        assert response.status == 400, (response.status, (await response.text())[:200])
    status, branding = await api(admin, "GET", "/api/v1/settings/branding")
    assert status == 200 and "\ud800" not in branding["agency_name"]


@pytest.mark.parametrize(("charset", "surrogate"), SURROGATES)
async def test_a_csv_file_whose_charset_makes_a_lone_surrogate_is_invalid_encoding(
    stack: Stack, admin: Browser, charset: str, surrogate: bytes
) -> None:
    portal = await new_portal(admin)
    body = b"email,name\r\nsurrogate@example.com,A" + surrogate + b"\r\n"
    status, answer = await api(
        admin,
        "POST",
        f"/api/v1/portals/{portal['id']}/invitations/batch",
        raw=body,
        headers={
            "Content-Type": f"text/csv; charset={charset}",
            "X-CSRF-Token": cookie(admin, "cp_csrf") or "",
        },
    )
    assert status == 422, (status, answer)
    assert answer["error"]["code"] == "invalid_encoding"
    assert answer["error"]["message"] == (
        f"The file is not {charset} text. Save it as CSV UTF-8 and try again."
    )
