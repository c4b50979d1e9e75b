"""Input limits: oversized bodies refused early, long fields answered with a clear 4xx,
portal HTML sanitised, and an over-long event field rejected, not a crash."""

from __future__ import annotations

import re
import uuid
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest

from tests.security.conftest import PublicEvents, api, cookie, csrf_of, raw_post, unique_email
from tests.security.flows import (
    answer_to,
    invitation_requested,
    new_client,
    new_portal,
    publish_envelope,
)
from tests.support.smtp import html_part, text_part
from tests.support.stack import Browser, Stack
from tests.support.webhooks import receiver

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MB = 1024 * 1024


async def test_an_oversized_body_is_refused_with_413(stack: Stack, admin: Browser) -> None:
    token = cookie(admin, "cp_csrf") or ""
    code, _, _ = await raw_post(
        stack,
        "/login",
        {"email": "a@example.com", "password": "x" * MB, "csrf_token": token},
        cookies={"cp_csrf": token},
    )
    assert code == 413
    # Not a form: never parsed, so it carries no CSRF token and stops there, unread.
    code, _, _ = await raw_post(stack, "/login", b"x" * MB, headers={"Content-Type": "text/plain"})
    assert code in (403, 413)
    status, _ = await api(admin, "POST", "/api/v1/portals", {"title": "t", "content": "x" * MB})
    assert status == 413


async def test_long_fields_get_a_clear_4xx(
    stack: Stack, admin: Browser, anonymous: Browser
) -> None:
    long = "a" * 10_000
    cases = [
        ("POST", "/api/v1/portals", {"title": long}),
        ("POST", "/api/v1/portals", {"title": "t", "content": "x" * 61_000}),
        ("POST", "/api/v1/portals", {"title": "t", "slug": "a" * 200}),
    ]
    portal = await new_portal(admin)
    cases += [
        ("POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": long + "@example.com"}),
        ("PATCH", f"/api/v1/portals/{portal['id']}", {"title": long}),
        ("GET", "/api/v1/users?q=" + long[:5000], None),
        ("GET", "/api/v1/portals?cursor=" + long[:5000], None),
    ]
    for method, path, body in cases:
        status, answer = await api(admin, method, path, body)
        assert 400 <= status < 500 and status != 403, (method, path[:60], status)
        assert isinstance(answer, dict) and answer["error"]["code"], answer
    # The same through the pages: a long email at log in and forgot password.
    for path, button, fields, wanted in (
        ("/login", "Log In", {"Email": long, "Password": "whatever-long-1"}, 401),
        ("/forgot-password", "Send Reset Link", {"Email": long}, 422),
    ):
        code, url, html = await anonymous.get(path)
        code, url, html = await anonymous.submit(url, html, button, fields)
        assert code == wanted, (path, code)
    # The editor form: a long title is refused, never a 500 nor saved cut short.
    code, url, html = await admin.get("/admin/portals/new")
    code, url, html = await admin.submit(
        url, html, "Save Portal", {"Title": long, "Content": "c", "Status": "Active"}
    )
    assert 400 <= code < 500, code
    status, page = await api(admin, "GET", "/api/v1/portals?q=" + "a" * 100)
    assert all(len(p["title"]) <= 200 for p in page["items"])


MULTIPART = "multipart/form-data; boundary=X"
# Form bodies no browser of ours sends, but anyone can: each must get a clear 400 page,
# never a 500.
UNREADABLE_FORMS = [
    (b"email=\xff\xfe&password=x", "application/x-www-form-urlencoded"),
    (b"email=a%40example.com", "application/x-www-form-urlencoded; charset=no-such-charset"),
    (b"--X\r\nbroken", MULTIPART),
    (
        b'--X\r\nContent-Disposition: form-data; name="email"\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\r\n--X--\r\n",
        MULTIPART,
    ),
]


@pytest.mark.parametrize(
    "body, content_type",
    UNREADABLE_FORMS,
    ids=["not-utf8", "unknown-charset", "multipart-cut-short", "multipart-not-utf8"],
)
async def test_a_form_that_cannot_be_read_gets_a_clear_400(
    stack: Stack, admin: Browser, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    for path in ("/login", "/forgot-password", "/invitations/accept", "/reset-password"):
        code, _, html = await raw_post(stack, path, body, headers=headers)
        assert code == 400, (path, code)
        assert "The form could not be read" in html, html[:300]
    async with admin.session.post(
        f"{stack.public_url}/admin/portals/new", data=body, headers=headers
    ) as response:
        assert response.status == 400
        assert "The form could not be read" in await response.text()


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser would build them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k.lower(): v or "" for k, v in attrs}))


HOSTILE = (
    "Hello\n\n<script>alert(1)</script>\n\n"
    "<img src=x onerror=alert(1)>\n\n"
    "[click](javascript:alert(1))\n\n"
    '<a href="javascript:alert(2)">x</a> <iframe src="https://evil.example"></iframe>\n\n'
    '<p onclick="alert(3)" style="x">para</p> **bold**'
)


async def test_portal_content_is_sanitised_on_the_clients_page(
    stack: Stack, admin: Browser
) -> None:
    client = await new_client(stack, admin, content=HOSTILE)
    try:
        code, _, html = await client.browser.get(f"/client-portal/{client.portal['slug']}/")
        assert code == 200 and "<strong>bold</strong>" in html
        tags = Tags()
        tags.feed(html)
        assert not [
            t
            for t in tags.found
            if t[0] in {"script", "iframe"} and not t[1].get("src", "").startswith("/static/")
        ]
        handlers = [(t, a) for t, attrs in tags.found for a in attrs if a.startswith("on")]
        assert not handlers, handlers
        # Every link but the page's own icon (href="data:," in base.html: no favicon
        # request), which the Content can't write (a <link> isn't kept by the sanitiser).
        links = [
            v
            for tag, attrs in tags.found
            for k, v in attrs.items()
            if k in {"href", "src"} and not (tag == "link" and attrs.get("rel") == "icon")
        ]
        assert not [v for v in links if v.strip().lower().startswith(("javascript:", "data:"))]
        # The page's own CSP forbids inline script as a second line.
        async with client.browser.session.get(
            f"{stack.public_url}/client-portal/{client.portal['slug']}/"
        ) as response:
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    finally:
        await client.browser.close()


async def test_an_over_long_email_in_an_event_is_rejected_as_invalid_email(
    stack: Stack, admin: Browser, public_events: PublicEvents
) -> None:
    portal = await new_portal(admin)
    key = f"crm-{uuid.uuid4()}"
    data = {
        "portal_id": portal["id"],
        "email": "a" * 10_000 + "@example.com",
        "idempotency_key": key,
    }
    await publish_envelope(stack, invitation_requested(data))
    found = (await answer_to(stack, public_events, "invitation.rejected", key))["data"]
    assert found["reason"] == "invalid_email"
    assert len(found.get("email") or "") <= 320  # the rejection doesn't echo 10 kB back
    # A well-formed request on the same bus still goes through afterwards.
    email = unique_email("after")
    status, _ = await api(
        admin, "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": email}
    )
    assert status == 201


@pytest.mark.parametrize("correlation_id", ["crm\r\nX-Injected: 1", "crm\x7fdeal", "crm\u2028deal"])
async def test_a_correlation_id_no_header_can_carry_is_still_answered(
    stack: Stack, admin: Browser, public_events: PublicEvents, correlation_id: str
) -> None:
    """An integration's correlation id follows its request into the services' calls
    (X-Correlation-ID): one with a line break or a control character can't be a header
    value, and the request was retried until dead-lettered, never answered. It is
    answered under its own correlation id, and the calls carry a plain one."""
    portal = await new_portal(admin)
    key = f"crm-{uuid.uuid4()}"
    data = {"portal_id": portal["id"], "email": unique_email(), "idempotency_key": key}
    await publish_envelope(stack, invitation_requested(data, correlation_id))
    found = await answer_to(stack, public_events, "invitation.created", key)
    assert found["correlation_id"] == correlation_id


async def test_a_path_id_that_is_no_uuid_is_404_on_every_route(
    stack: Stack, admin: Browser
) -> None:
    """Thirty-six hex digits and hyphens in any order matched the routes: the batch
    answered 500 and the invitation a 422 about "group count"."""
    portal = await new_portal(admin)
    for not_uuid in ("-" * 36, "0" * 36, "0123456789abcdef-0123456789abcdef-01"):
        for method, path, body in (
            (
                "POST",
                f"/api/v1/portals/{not_uuid}/invitations/batch",
                {"invitations": [{"email": unique_email()}]},
            ),
            ("POST", f"/api/v1/portals/{not_uuid}/invitations", {"email": unique_email()}),
            ("GET", f"/api/v1/portals/{not_uuid}", None),
            ("PATCH", f"/api/v1/portals/{not_uuid}", {"title": "x"}),
            ("PUT", f"/api/v1/portals/{not_uuid}/client", {"user_id": None}),
            ("POST", f"/api/v1/invitations/{not_uuid}/resend", None),
            ("DELETE", f"/api/v1/keys/{not_uuid}", None),
        ):
            status, answer = await api(admin, method, path, body)
            assert status == 404, (method, path, answer)
            assert answer["error"]["code"] == "not_found", answer
    # The same id in capitals is the same portal.
    status, answer = await api(admin, "GET", f"/api/v1/portals/{portal['id'].upper()}")
    assert status == 200 and answer["id"] == portal["id"], answer


async def test_a_batch_row_is_read_as_strictly_as_one_invitation(
    stack: Stack, admin: Browser
) -> None:
    portal = await new_portal(admin)
    batch = f"/api/v1/portals/{portal['id']}/invitations/batch?dry_run=true"
    email = unique_email()
    for row in (
        f'{{"email": "{email}", "sub_client": "yes"}}',
        f'{{"email": "{email}", "sub_client": 1}}',
        f'{{"email": "{email}", "email": "{unique_email()}"}}',
    ):
        status, answer = await api(
            admin,
            "POST",
            batch,
            headers={"Content-Type": "application/json"},
            raw=f'{{"invitations": [{row}]}}'.encode(),
        )
        assert status == 422, (row, answer)
        assert answer["error"]["code"] in ("invalid_input", "duplicate_field"), answer
        assert answer["error"]["message"].split(":")[0] in ("invitations.0.sub_client", "email")
    # One key in each of two rows is two rows, and JSON's true is a Sub-Client.
    status, answer = await api(
        admin,
        "POST",
        batch,
        {"invitations": [{"email": email, "sub_client": True}, {"email": unique_email()}]},
    )
    assert status == 200 and [r["status"] for r in answer["results"]] == ["created"] * 2


async def test_a_cursor_of_another_list_is_refused(stack: Stack, admin: Browser) -> None:
    """Every list's cursor was the last row's time and id: an invitations cursor given to
    the portals list answered 200, a page starting at an unrelated time."""
    for _ in range(2):
        portal = await new_portal(admin)
        status, _ = await api(
            admin, "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": unique_email()}
        )
        assert status == 201
    cursors = {}
    for listing in ("portals", "invitations", "activity"):
        status, page = await api(admin, "GET", f"/api/v1/{listing}?limit=1")
        assert status == 200 and page["next_cursor"], page
        cursors[listing] = page["next_cursor"]
    for listing, other in (
        ("portals", "invitations"),
        ("invitations", "portals"),
        ("activity", "invitations"),
        ("users", "portals"),
    ):
        status, answer = await api(admin, "GET", f"/api/v1/{listing}?cursor={cursors[other]}")
        assert status == 422, (listing, other, answer)
        assert answer["error"]["code"] == "invalid_cursor", answer
    for listing, cursor in cursors.items():
        status, page = await api(admin, "GET", f"/api/v1/{listing}?limit=1&cursor={cursor}")
        assert status == 200 and len(page["items"]) == 1, (listing, page)


async def test_a_cursor_no_list_issued_gets_the_same_answer_on_every_list(
    stack: Stack, admin: Browser
) -> None:
    """Every list documents its cursor as up to 500 characters, but invitations and the
    webhook deliveries refused more than 200 as a malformed query, another answer than
    a cursor no list issued gets elsewhere. One bound now: any cursor within it that is
    not a list's is 422 invalid_cursor; one past it, 422 naming the cursor."""
    async with receiver() as hook:
        status, endpoint = await api(
            admin, "POST", "/api/v1/webhooks", {"url": hook.url, "events": ["invitation.created"]}
        )
        assert status == 201, endpoint
        for listing in (
            "portals",
            "invitations",
            "activity",
            "users",
            f"webhooks/{endpoint['id']}/deliveries",
        ):
            for forged in ("x" * 16, "x" * 300, "x" * 500):
                status, answer = await api(admin, "GET", f"/api/v1/{listing}?cursor={forged}")
                assert (status, answer["error"]["code"]) == (422, "invalid_cursor"), (
                    listing,
                    len(forged),
                    answer,
                )
            status, answer = await api(admin, "GET", f"/api/v1/{listing}?cursor={'x' * 501}")
            assert status == 422 and "cursor" in str(answer["error"]), (listing, answer)


# What a client or a misconfigured proxy may send to make the site name another host.
HOSTILE_HOST = {
    "Host": "evil.example",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Server": "evil.example",
    "X-Host": "evil.example",
    "X-Original-URL": "//evil.example/",
    "Forwarded": "host=evil.example;proto=https",
}


def _links(msg: EmailMessage) -> list[str]:
    html, text = html_part(msg), text_part(msg)
    return re.findall(r'(?:href|src)="([^"]+)"', html) + re.findall(r"https?://\S+", text)


async def test_links_in_emails_and_redirects_ignore_the_host_and_forwarded_headers(
    stack: Stack, admin: Browser
) -> None:
    """Email links are built from PUBLIC_URL: a reset asked for, an invitation sent and a
    log in redirected under another Host and every forwarded header still name this site
    (relative Locations; the emails' links, logo included, on PUBLIC_URL)."""
    client = await new_client(stack, admin)
    page = Browser(stack.public_url)
    try:
        _, _, html = await page.get("/forgot-password")
        status, _, text = await raw_post(
            stack,
            "/forgot-password",
            {"csrf_token": csrf_of(html), "email": client.email},
            cookies={"cp_csrf": cookie(page, "cp_csrf") or ""},
            headers=HOSTILE_HOST,
        )
        assert status == 200, text[:300]
        invited = unique_email("host")
        status, body = await api(
            admin,
            "POST",
            f"/api/v1/portals/{client.portal['id']}/invitations",
            {"email": invited},
            headers=HOSTILE_HOST,
        )
        assert status == 201, body
        async with page.session.get(
            stack.public_url + "/admin/portals", headers=HOSTILE_HOST, allow_redirects=False
        ) as redirected:
            assert redirected.headers["Location"].startswith("/login?"), redirected.headers
    finally:
        await page.close()
    reset = (await stack.sink.wait_for(client.email, count=2))[-1]
    invitation = (await stack.sink.wait_for(invited))[-1]
    for msg in (reset, invitation):
        links = _links(msg)
        assert any("token=" in link for link in links), links
        off_site = [link for link in links if not link.startswith(stack.public_url + "/")]
        assert not off_site, off_site
        assert "evil.example" not in msg.as_string()
