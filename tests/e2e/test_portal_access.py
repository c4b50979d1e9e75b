"""Who may see which portal, and how a client finds it (issue 5), on the real stack."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Browser, Stack
from tests.e2e.flows import CLIENT_PASSWORD, Api, accept_from_email, eventually, unique_email
from tests.support.forms import find_form
from tests.support.smtp import accept_link
from tests.support.stack import login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

UNAVAILABLE = "isn't available"
NEW_PASSWORD = "a-brand-new-password-9"


def title(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex[:6]}"


async def portal(api: Api, tag: str, content: str, status: str = "active") -> dict[str, Any]:
    code, body = await api.call(
        "POST", "/portals", {"title": title(tag), "content": content, "status": status}
    )
    assert code == 201, body
    return dict(body)


async def user_id_of(api: Api, email: str) -> str:
    code, page = await api.call("GET", "/users?" + "q=" + quote(email))
    assert code == 200, page
    ids = [u["id"] for u in page["items"] if u["email"].lower() == email.lower()]
    assert len(ids) == 1, page
    return str(ids[0])


async def new_client(stack: Stack, api: Api, portal_id: str, tag: str) -> tuple[str, str, Browser]:
    """Invite someone through the API and accept in a new browser: email, user id and
    the logged-in browser (closed by the caller)."""
    email = unique_email(tag)
    code, body = await api.invite(portal_id, email)
    assert code == 201, body
    browser = Browser(stack.public_url)
    _, url, html = await accept_from_email(stack, browser, email)
    assert "/client-portal/" in url, (url, html[:500])
    return email, await user_id_of(api, email), browser


async def login_location(
    stack: Stack, email: str, password: str, next_path: str | None = None
) -> tuple[int, str]:
    """Log in through the form without following the redirect: (status, Location)."""
    client = Browser(stack.public_url)
    try:
        query = "" if next_path is None else "?next=" + quote(next_path, safe="")
        _, _, html = await client.get("/login" + query)
        data = find_form(html, "Log In").fill({"Email": email, "Password": password})
        async with client.session.post(
            stack.public_url + "/login", data=data, allow_redirects=False
        ) as response:
            return response.status, response.headers.get("Location", "")
    finally:
        await client.close()


async def set_login_redirect(api: Api, on: bool) -> None:
    code, body = await api.call("PUT", "/settings/access", {"login_redirect": on})
    assert code == 200 and body["login_redirect"] is on, body


def path_of(location: str) -> str:
    return urlsplit(location).path


# --- statuses ------------------------------------------------------------------------
async def test_each_status_for_client_and_admin(stack: Stack, api: Api, admin: Browser) -> None:
    secret = f"secret-content-{uuid.uuid4().hex[:8]}"
    p = await portal(api, "Status Portal", f"The **{secret}** plan.")
    _, _, client = await new_client(stack, api, p["id"], "status")
    page = f"/client-portal/{p['slug']}/"
    try:
        for status in ("active", "pending", "archived", "active"):
            code, body = await api.call("PATCH", f"/portals/{p['id']}", {"status": status})
            assert code == 200 and body["status"] == status, body

            code, url, html = await client.get(page)
            assert code == 200, (status, code, html[:500])
            assert url.endswith(page)
            if status == "active":
                assert secret in html and UNAVAILABLE not in html
            else:
                assert UNAVAILABLE in html, html[:1000]
                assert secret not in html
                assert "Traceback" not in html
                # Not offered in the client's list either: the friendly "no portal" page.
                code, _, listing = await client.get("/client-portal/")
                assert code == 200 and p["title"] not in listing
                assert "You don't have a portal yet" in listing

            # The admin can always open the editor, whatever the status.
            code, _, html = await admin.get(f"/admin/portals/{p['id']}")
            assert code == 200 and "Edit Portal" in html and secret in html
    finally:
        await client.close()


# --- primary client and sub-clients --------------------------------------------------
async def test_client_and_sub_clients_set_in_the_editor_have_the_same_access(
    stack: Stack, api: Api, admin: Browser
) -> None:
    home = await portal(api, "Home Portal", "home")
    a_email, a_id, a = await new_client(stack, api, home["id"], "primary")
    b_email, b_id, b = await new_client(stack, api, home["id"], "sub")
    shared = await portal(api, "Shared Portal", "shared-words")
    page = f"/client-portal/{shared['slug']}/"
    try:
        for who in (a, b):
            code, _, _ = await who.get(page)
            assert code == 404  # not theirs yet, and its name doesn't leak

        # The editor's Client and Sub-Clients fields, as the form posts them. (Content is
        # given: the test form reader doesn't pick up a textarea's text as a browser does.)
        code, url, html = await admin.get(f"/admin/portals/{shared['id']}")
        code, url, html = await admin.submit(
            url,
            html,
            "Save Portal",
            {"Client": a_email, "Sub-Clients": b_email, "Content": "shared-words"},
        )
        assert code == 200, html[:1000]
        code, saved = await api.call("GET", f"/portals/{shared['id']}")
        assert saved["client_id"] == a_id and saved["sub_client_ids"] == [b_id], saved

        for who in (a, b):
            code, _, html = await who.get(page)
            assert code == 200 and "shared-words" in html
            code, _, html = await who.get("/client-portal/")
            assert shared["title"] in html and home["title"] in html  # two: a list

        # Remove the sub-client in the editor: their very next request is refused.
        code, url, html = await admin.get(f"/admin/portals/{shared['id']}")
        code, url, html = await admin.submit(
            url, html, "Save Portal", {f"Remove {b_email}": b_id, "Content": "shared-words"}
        )
        assert code == 200, html[:1000]
        code, _, _ = await b.get(page)
        assert code == 404
        code, _, html = await a.get(page)
        assert code == 200 and "shared-words" in html

        # Clear the Client field: the same for the primary client.
        code, url, html = await admin.get(f"/admin/portals/{shared['id']}")
        code, url, html = await admin.submit(
            url, html, "Save Portal", {"Client": "", "Content": "shared-words"}
        )
        assert code == 200, html[:1000]
        code, _, _ = await a.get(page)
        assert code == 404
    finally:
        await a.close()
        await b.close()


async def test_client_and_sub_clients_set_through_the_api(stack: Stack, api: Api) -> None:
    home = await portal(api, "Api Home", "home")
    _, a_id, a = await new_client(stack, api, home["id"], "api-a")
    _, b_id, b = await new_client(stack, api, home["id"], "api-b")
    target = await portal(api, "Api Target", "target-words")
    page = f"/client-portal/{target['slug']}/"
    try:
        code, body = await api.call("PUT", f"/portals/{target['id']}/client", {"user_id": b_id})
        assert code == 200 and body["client_id"] == b_id, body
        code, body = await api.call(
            "PUT", f"/portals/{target['id']}/sub-clients", {"user_ids": [a_id]}
        )
        assert code == 200 and body["sub_client_ids"] == [a_id], body
        for who in (a, b):
            code, _, html = await who.get(page)
            assert code == 200 and "target-words" in html

        code, body = await api.call("PUT", f"/portals/{target['id']}/sub-clients", {"user_ids": []})
        assert code == 200 and body["sub_client_ids"] == [], body
        code, _, _ = await a.get(page)
        assert code == 404
        code, body = await api.call("PUT", f"/portals/{target['id']}/client", {"user_id": None})
        assert code == 200 and body["client_id"] is None, body
        code, _, _ = await b.get(page)
        assert code == 404

        # Only existing users can be given access.
        ghost = str(uuid.uuid4())
        code, body = await api.call("PUT", f"/portals/{target['id']}/client", {"user_id": ghost})
        assert code == 422, body
        code, body = await api.call(
            "PUT", f"/portals/{target['id']}/sub-clients", {"user_ids": [ghost]}
        )
        assert code == 422, body
    finally:
        await a.close()
        await b.close()


# --- /client-portal/ -----------------------------------------------------------------
async def test_client_portal_in_each_of_its_four_cases(
    stack: Stack, api: Api, browser: Browser
) -> None:
    first = await portal(api, "Four Cases One", "first-words")
    email, user_id, client = await new_client(stack, api, first["id"], "four")
    await client.close()

    # Not logged in: the login page, then back to /client-portal/ after logging in.
    code, url, html = await browser.get("/client-portal/")
    assert code == 200 and urlsplit(url).path == "/login" and "Log In" in html
    code, url, html = await browser.submit(
        url, html, "Log In", {"Email": email, "Password": CLIENT_PASSWORD}
    )
    assert code == 200
    # One portal: /client-portal/ goes straight to it.
    assert url.endswith(f"/client-portal/{first['slug']}/"), url
    assert "first-words" in html

    # Several: a list of them.
    second = await portal(api, "Four Cases Two", "second-words")
    code, body = await api.call("PUT", f"/portals/{second['id']}/client", {"user_id": user_id})
    assert code == 200, body
    code, url, html = await browser.get("/client-portal/")
    assert code == 200 and url.endswith("/client-portal/")
    assert first["title"] in html and second["title"] in html
    assert f'href="/client-portal/{first["slug"]}/"' in html
    assert f'href="/client-portal/{second["slug"]}/"' in html

    # None: a friendly page.
    for p in (first, second):
        code, body = await api.call("PUT", f"/portals/{p['id']}/client", {"user_id": None})
        assert code == 200, body
    code, url, html = await browser.get("/client-portal/")
    assert code == 200 and url.endswith("/client-portal/")
    assert "You don't have a portal yet" in html
    assert first["title"] not in html and second["title"] not in html


# --- Login Redirect and next ---------------------------------------------------------
async def test_login_redirect_on_and_off(stack: Stack, api: Api, admin: Browser) -> None:
    p = await portal(api, "Redirect Portal", "r")
    email, _, client = await new_client(stack, api, p["id"], "redirect")
    await client.close()
    elsewhere = f"/client-portal/{p['slug']}/"
    _, initial = await api.call("GET", "/settings/access")
    try:
        # On, through Settings → Access & Login.
        code, url, html = await admin.get("/admin/settings")
        assert "Access &amp; Login" in html or "Access & Login" in html
        code, url, html = await admin.submit(url, html, "Save Settings", {"Login Redirect": "on"})
        assert code == 200
        code, body = await api.call("GET", "/settings/access")
        assert body["login_redirect"] is True, body
        assert await login_location(stack, email, CLIENT_PASSWORD) == (303, "/client-portal/")
        code, location = await login_location(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert code == 303 and path_of(location).startswith("/admin"), location

        # Off: the page they came from, or the home page.
        await set_login_redirect(api, False)
        assert await login_location(stack, email, CLIENT_PASSWORD) == (303, "/")
        assert await login_location(stack, email, CLIENT_PASSWORD, elsewhere) == (
            303,
            elsewhere,
        )
        code, location = await login_location(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert code == 303 and path_of(location).startswith("/admin"), location
    finally:
        await set_login_redirect(api, initial["login_redirect"])


@pytest.mark.parametrize(
    "attempt",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
        "///evil.example",
        "/\t/evil.example",
    ],
)
async def test_open_redirect_attempts_stay_on_site(stack: Stack, attempt: str) -> None:
    code, location = await login_location(stack, ADMIN_EMAIL, ADMIN_PASSWORD, attempt)
    assert code == 303
    assert _on_site(stack, location), location
    # The raw query too (the browser sends %5C as is): /login?next=/%5Cevil.example.
    client = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    try:
        async with client.session.get(
            f"{stack.public_url}/login?next={attempt}", allow_redirects=False
        ) as response:
            assert _on_site(stack, response.headers.get("Location", "/")), response.headers
    finally:
        await client.close()


def _on_site(stack: Stack, location: str) -> bool:
    if location.startswith(stack.public_url + "/"):
        location = location[len(stack.public_url) :]
    return (
        location.startswith("/")
        and not location.startswith("//")
        and "\\" not in location
        and "evil.example" not in urlsplit(location).netloc
        and not re.match(r"^/[\t\n\r ]*/", location)
    )


async def test_open_redirect_attempts_for_a_client(stack: Stack, api: Api) -> None:
    p = await portal(api, "Open Redirect", "o")
    email, _, client = await new_client(stack, api, p["id"], "openredir")
    await client.close()
    for attempt in ("//evil.example", "https://evil.example", "/\\evil.example"):
        code, location = await login_location(stack, email, CLIENT_PASSWORD, attempt)
        assert code == 303 and _on_site(stack, location), location


# --- enumeration ---------------------------------------------------------------------
def _login_error(html: str) -> str:
    found = re.search(r'<p class="form-error"[^>]*>(.*?)</p>', html, re.S)
    assert found, html[:1000]
    return found.group(1).strip()


async def test_log_in_and_forgot_password_answer_the_same_for_unknown_emails(
    stack: Stack, api: Api, browser: Browser
) -> None:
    p = await portal(api, "Enumeration", "e")
    known, _, client = await new_client(stack, api, p["id"], "known")
    await client.close()
    unknown = unique_email("nobody")

    answers = []
    for email in (known, unknown):
        code, url, html = await browser.get("/login")
        code, url, html = await browser.submit(
            url, html, "Log In", {"Email": email, "Password": "not-the-password-123"}
        )
        answers.append((code, _login_error(html), html.replace(email, "EMAIL")))
    assert answers[0][:2] == answers[1][:2]
    assert answers[0][0] == 401
    # The page is the same apart from the email typed back into the field.
    assert _strip_tokens(answers[0][2]) == _strip_tokens(answers[1][2])

    forgot = []
    for email in (known, unknown):
        code, url, html = await browser.get("/forgot-password")
        code, url, html = await browser.submit(url, html, "Send Reset Link", {"Email": email})
        forgot.append((code, _strip_tokens(html)))
    assert forgot[0] == forgot[1]
    assert forgot[0][0] == 200 and "If an account exists" in forgot[0][1]
    await stack.sink.wait_for(known, count=2)  # the invitation, then the reset link
    assert stack.sink.to(unknown) == []


def _strip_tokens(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]*"', 'name="csrf_token"', html)


# --- disabling a user ----------------------------------------------------------------
async def test_disabling_a_user_ends_their_sessions_and_access(
    stack: Stack, api: Api, admin: Browser
) -> None:
    p = await portal(api, "Disable Portal", "disable-words")
    email, user_id, client = await new_client(stack, api, p["id"], "disable")
    page = f"/client-portal/{p['slug']}/"
    second = await login(stack, email, CLIENT_PASSWORD)
    try:
        for who in (client, second):
            code, _, html = await who.get(page)
            assert code == 200 and "disable-words" in html

        code, url, html = await admin.get("/admin/users?q=" + quote(email))
        assert email in html and p["title"] in html
        code, url, html = await admin.submit(url, html, "Disable")
        assert code == 200 and "Disabled" in html, html[:1000]

        for who in (client, second):
            code, url, html = await who.get(page)
            assert urlsplit(url).path == "/login", url  # the cookie no longer works
            assert "disable-words" not in html
        status, _ = await login_location(stack, email, CLIENT_PASSWORD)
        assert status == 401

        async def access_gone() -> bool | None:
            _, body = await api.call("GET", f"/portals/{p['id']}")
            return True if body["client_id"] != user_id else None

        await eventually(access_gone, "the disabled user's access to be removed")
        code, body = await api.call("GET", f"/portals/{p['id']}")
        assert user_id not in body["sub_client_ids"]
    finally:
        await client.close()
        await second.close()


async def test_a_link_for_a_disabled_account_says_so_and_works_once_enabled(
    stack: Stack, api: Api, admin: Browser
) -> None:
    """Invited to a second portal, then disabled before accepting (or invited while
    disabled): the link says the account is disabled, instead of a log in that answers
    "The email or password is incorrect." to the right password; enabled again, the same
    link logs in and lands on the portal."""
    first = await portal(api, "Disabled First", "first-words")
    email, _, client = await new_client(stack, api, first["id"], "disabled-link")
    await client.close()
    second = await portal(api, "Disabled Second", "second-words")
    code, _ = await api.invite(second["id"], email)
    assert code == 201
    link = accept_link((await stack.sink.wait_for(email, count=2))[-1])
    code, url, html = await admin.get("/admin/users?q=" + quote(email))
    code, url, html = await admin.submit(url, html, "Disable")
    assert code == 200 and "Disabled" in html, html[:1000]

    browser = Browser(stack.public_url)
    try:
        code, url, html = await browser.get(link)
        assert code == 403 and "Your account is disabled" in html, html[:2000]
        assert "Ask the person who invited you to enable it" in html
        assert 'type="password"' not in html
        # The log in form of a page shown before the account was disabled says the same.
        token = link.split("token=", 1)[1]
        code, _, html = await browser.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert csrf is not None
        async with browser.session.post(
            stack.public_url + "/invitations/accept/login",
            data={"token": token, "password": CLIENT_PASSWORD, "csrf_token": csrf.group(1)},
        ) as response:
            html = await response.text()
            assert response.status == 403 and "Your account is disabled" in html, html[:2000]

        code, url, html = await admin.get("/admin/users?q=" + quote(email))
        code, url, html = await admin.submit(url, html, "Enable")
        assert code == 200, html[:1000]
        code, url, html = await browser.get(link)
        assert code == 200 and "log in to accept" in html, html[:2000]
        code, url, html = await browser.submit(url, html, "Log In", {"Password": CLIENT_PASSWORD})
        assert code == 200 and urlsplit(url).path == f"/client-portal/{second['slug']}/", url
        assert "second-words" in html
    finally:
        await browser.close()


# --- Forgot password? ----------------------------------------------------------------
def _reset_link(stack: Stack, email: str) -> str:
    for message in reversed(stack.sink.to(email)):
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        found = re.search(r"(https?://\S*/reset-password\?token=[A-Za-z0-9_\-]+)", text)
        if found:
            return found.group(1)
    raise AssertionError(f"no reset link for {email}")


async def test_forgot_password_resets_and_ends_old_sessions(
    stack: Stack, api: Api, browser: Browser
) -> None:
    p = await portal(api, "Reset Portal", "reset-words")
    email, _, client = await new_client(stack, api, p["id"], "reset")
    page = f"/client-portal/{p['slug']}/"
    try:
        code, url, html = await browser.get("/login")
        found = re.search(r'<a href="(/forgot-password)">Forgot password\?</a>', html)
        assert found, "no Forgot password? link on the login page"
        code, url, html = await browser.get(found[1])
        code, url, html = await browser.submit(url, html, "Send Reset Link", {"Email": email})
        assert code == 200
        await stack.sink.wait_for(email, count=2)
        link = _reset_link(stack, email)
        assert link.startswith(stack.public_url + "/reset-password?token=")

        code, url, html = await browser.get(link)
        assert code == 200 and email in html
        code, url, html = await browser.submit(
            url, html, "Set Password", {"Password": NEW_PASSWORD, "Confirm Password": NEW_PASSWORD}
        )
        assert code == 200 and urlsplit(url).path == "/login", url
        assert "Your password has been set" in html

        code, url, _ = await client.get(page)
        assert urlsplit(url).path == "/login", "the old session still works"
        assert (await login_location(stack, email, CLIENT_PASSWORD))[0] == 401
        fresh = await login(stack, email, NEW_PASSWORD)
        try:
            code, _, html = await fresh.get(page)
            assert code == 200 and "reset-words" in html
        finally:
            await fresh.close()

        # Single use.
        code, _, html = await browser.get(link)
        assert code != 200 and "Forgot password?" in html
    finally:
        await client.close()


# --- slugs ---------------------------------------------------------------------------
async def test_portal_slugs_generated_editable_validated_and_unique(
    api: Api, admin: Browser
) -> None:
    tag = uuid.uuid4().hex[:6]
    code, first = await api.call("POST", "/portals", {"title": f"Spring Launch {tag} 2025!"})
    assert code == 201 and first["slug"] == f"spring-launch-{tag}-2025", first
    code, again = await api.call("POST", "/portals", {"title": f"Spring Launch {tag} 2025!"})
    assert code == 201 and again["slug"] == f"spring-launch-{tag}-2025-2", again

    code, edited = await api.call("PATCH", f"/portals/{again['id']}", {"slug": f"custom-{tag}"})
    assert code == 200 and edited["slug"] == f"custom-{tag}", edited
    code, _, html = await admin.get(f"/client-portal/custom-{tag}/")
    assert code == 200 and edited["title"] in html
    code, _, html = await admin.get(f"/admin/portals/{again['id']}")
    assert f"/client-portal/custom-{tag}/" in html

    for bad in ("Has Spaces", "UPPER", "trailing-", "-leading", "double--dash", "x" * 81, ""):
        code, body = await api.call("PATCH", f"/portals/{again['id']}", {"slug": bad})
        assert code == 422, (bad, body)
        assert "slug" in body["error"]["message"].lower(), body

    code, body = await api.call("PATCH", f"/portals/{again['id']}", {"slug": first["slug"]})
    assert code == 409, body
    assert body["error"]["code"] == "slug_taken"
    assert first["slug"] in body["error"]["message"]
    code, body = await api.call("POST", "/portals", {"title": "x", "slug": first["slug"]})
    assert code == 409 and body["error"]["code"] == "slug_taken", body
    code, still = await api.call("GET", f"/portals/{again['id']}")
    assert still["slug"] == f"custom-{tag}"
