"""Page forms sent as no browser sends them: multipart bodies with parts a browser never
writes. Each gets a 400 page that says what is wrong, never a 500, and nothing is done."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

BOUNDARY = "XyZ"
NAMED = b'Content-Disposition: form-data; name="email"'


def _multipart(*parts: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n"
        for head, value in parts
    )
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


async def _post_form(gw: TestClient, body: bytes) -> tuple[int, str]:
    response = await gw.post(
        "/login",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    return response.status, await response.text()


NOT_A_BROWSERS = "it was not sent the way a browser sends a form"


@pytest.mark.parametrize(
    "body",
    [
        # aiohttp's "unknown content transfer encoding": a 500, logged as our fault.
        _multipart((NAMED + b"\r\nContent-Transfer-Encoding: x-custom", b"a")),
        # Each of these was told the form "was not sent as UTF-8 text".
        _multipart((b"Content-Disposition: form-data", b"a")),  # a part with no name
        _multipart((b"Content-Type: text/plain", b"a")),  # nor a disposition
        _multipart(  # a part holding another multipart body
            (
                NAMED + b"\r\nContent-Type: multipart/mixed; boundary=in",
                b"--in\r\nContent-Type: text/plain\r\n\r\nx\r\n--in--",
            )
        ),
        _multipart((NAMED + b"\r\nX-Pad: " + b"a" * 9000, b"a")),  # a header over 8 KiB
        _multipart((NAMED + b"\r\nContent-Transfer-Encoding: base64", b"abc")),
    ],
    ids=["transfer-coding", "no-name", "no-disposition", "nested", "long-header", "base64"],
)
async def test_a_multipart_form_no_browser_sends_is_told_so(gw: TestClient, body: bytes) -> None:
    status, page = await _post_form(gw, body)
    assert status == 400, page[:300]
    assert NOT_A_BROWSERS in page


async def test_a_form_not_in_utf8_is_still_told_so(gw: TestClient) -> None:
    status, page = await _post_form(gw, _multipart((NAMED, b"\xff\xfe")))
    assert status == 400
    assert "it was not sent as UTF-8 text" in page


TOO_LARGE = "The form holds more than this page takes"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"email=" + b"a" * 70_000, "application/x-www-form-urlencoded"),
        # aiohttp's bound of 1,000 fields.
        (
            _multipart(*((NAMED, b"a") for _ in range(1001))),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
    ],
    ids=["64-kib", "1001-fields"],
)
async def test_a_form_over_its_bounds_is_told_so_on_a_page(
    gw: TestClient, body: bytes, content_type: str
) -> None:
    """The page said aiohttp's "Request Entity Too Large", as title and as message."""
    response = await gw.post("/login", data=body, headers={"Content-Type": content_type})
    page = await response.text()
    assert response.status == 413
    assert TOO_LARGE in page
    assert "Request Entity Too Large" not in page
