"""/api/v1 as a sloppy or hostile client meets it: a body is JSON as RFC 8259 defines it,
each value of its schema's JSON type (never "yes" for true, 7.0 for 7), each key once; a
body of another declared type is 415, one that isn't JSON 400, a query parameter given
twice 422; each refusal in the error shape, naming the field, and nothing changed."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.gateway.fakes import Backend
from tests.gateway.test_api import admin_headers

JSON = "application/json"


async def send(
    gw: TestClient,
    headers: dict[str, str],
    method: str,
    path: str,
    body: bytes,
    content_type: str | None = JSON,
) -> tuple[int, dict[str, Any]]:
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    response = await gw.request(method, path, data=body, headers=sent)
    answer = await response.json()
    return response.status, answer


async def test_a_value_of_another_json_type_is_refused_not_coerced(
    gw: TestClient, backend: Backend
) -> None:
    headers = await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    invite = f"/api/v1/portals/{portal['id']}/invitations"
    cases = [
        # Each was taken as true, 7, 1 or Off before, the request done as if sent so.
        (invite, b'{"email": "a@example.com", "sub_client": "yes"}', "sub_client"),
        (invite, b'{"email": "a@example.com", "sub_client": 1}', "sub_client"),
        (invite, b'{"email": "a@example.com", "sub_client": "false"}', "sub_client"),
        (invite, b'{"email": "a@example.com", "expires_in_days": "7"}', "expires_in_days"),
        (invite, b'{"email": "a@example.com", "expires_in_days": 7.0}', "expires_in_days"),
        ("/api/v1/settings/access", b'{"login_redirect": "yes"}', "login_redirect"),
        ("/api/v1/settings/access", b'{"login_redirect": 1}', "login_redirect"),
        ("/api/v1/settings/access", b'{"invitation_reminder_days": false}', "reminder_days"),
        ("/api/v1/settings/access", b'{"invitation_expiry_days": 7.0}', "expiry_days"),
        (f"/api/v1/portals/{portal['id']}", b'{"title": "B", "revision": true}', "revision"),
        (f"/api/v1/portals/{portal['id']}", b'{"title": "B", "revision": "1"}', "revision"),
        (f"/api/v1/portals/{portal['id']}", b'{"title": "B", "revision": 1.0}', "revision"),
        (f"/api/v1/portals/{portal['id']}", b'{"title": "B", "revision": 1e1}', "revision"),
    ]
    login_redirect, reminder_days = backend.login_redirect, backend.reminder_days
    for path, body, field in cases:
        method = "POST" if path == invite else "PUT" if "settings" in path else "PATCH"
        status, answer = await send(gw, headers, method, path, body)
        assert status == 422, (body, answer)
        assert answer["error"]["code"] == "invalid_input", answer
        assert field in answer["error"]["message"], answer
    assert not backend.invitations
    assert portal["title"] == "Acme"
    # The message names the field, what it takes and what came (a string's text never).
    for body, message in (
        (
            b'{"email": "a@example.com", "sub_client": "yes"}',
            "sub_client: Input should be a valid boolean (got a string)",
        ),
        (
            b'{"email": "a@example.com", "expires_in_days": 7.5}',
            "expires_in_days: Input should be a valid integer (got 7.5)",
        ),
        (
            b'{"email": "a@example.com", "expires_in_days": 9}',
            "expires_in_days: Link Expiry must be 7, 14, 21 or 30 days.",
        ),
        (b'["a@example.com"]', "body: Input should be an object (got an array)"),
    ):
        status, answer = await send(gw, headers, "POST", invite, body)
        assert (status, answer["error"]["message"]) == (422, message), answer
    assert (backend.login_redirect, backend.reminder_days) == (login_redirect, reminder_days)
    # JSON's own types still do what they say.
    status, answer = await send(
        gw, headers, "POST", invite, b'{"email": "a@example.com", "sub_client": true}'
    )
    assert status == 201 and answer["outcome"] == "created", answer
    status, answer = await send(
        gw, headers, "PUT", "/api/v1/settings/access", b'{"invitation_reminder_days": 0}'
    )
    assert status == 200 and answer["invitation_reminder_days"] == 0, answer


async def test_a_revision_no_portal_can_reach_is_refused(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    for revision in (b"2147483648", b"100000000000000000000000000000000"):
        status, answer = await send(
            gw,
            headers,
            "PATCH",
            f"/api/v1/portals/{portal['id']}",
            b'{"title": "B", "revision": ' + revision + b"}",
        )
        assert status == 422, answer
        assert answer["error"]["message"] == (
            "revision: Input should be less than or equal to 2147483647"
        )


async def test_a_key_given_twice_is_refused(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    status, answer = await send(
        gw, headers, "POST", "/api/v1/portals", b'{"title": "Acme", "title": "Other"}'
    )
    assert status == 422, answer
    assert answer["error"] == {
        "code": "duplicate_field",
        "message": "title: given more than once in one object; send each field once.",
    }
    portal = backend.add_portal("Acme")
    status, answer = await send(
        gw,
        headers,
        "POST",
        f"/api/v1/portals/{portal['id']}/invitations",
        b'{"email": "a@example.com", "sub_client": false, "sub_client": true}',
    )
    assert status == 422 and answer["error"]["code"] == "duplicate_field", answer
    assert not backend.invitations and len(backend.portals) == 1


async def test_a_body_declared_as_another_type_is_415(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    body = b'{"title": "Acme"}'
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=utf-16",
    ):
        status, answer = await send(gw, headers, "POST", "/api/v1/portals", body, content_type)
        assert status == 415, (content_type, answer)
        assert answer["error"]["code"] == "unsupported_media_type", answer
        assert (
            "application/json" in answer["error"]["message"]
            or "UTF-8" in (answer["error"]["message"])
        )
    assert not backend.portals
    # JSON, a +json type, JSON in UTF-8 said so, and no Content-Type at all are read.
    for content_type in (
        JSON,
        "application/merge-patch+json",
        "application/json; charset=UTF-8",
        None,
    ):
        status, answer = await send(gw, headers, "POST", "/api/v1/portals", body, content_type)
        assert status == 201, (content_type, answer)


async def test_a_body_that_is_not_json_is_400_saying_why(gw: TestClient, backend: Backend) -> None:
    headers = await admin_headers(gw, backend)
    cases = [
        (b"", "empty"),
        (b"  ", "empty"),
        ('{"title": "Acme"}'.encode("utf-16"), "UTF-16"),
        (b'{"title": "Acme \xff"}', "UTF-8"),
        (b'{"title": NaN}', "line 1 column 11"),
        (b'{"title": "x", "content": Infinity}', "line 1 column"),
        (b'{"title": "\\ud800"}', "surrogate"),
        (b'{"title": "x", "content": 1e400}', "infinity"),
        (b'{"title": "x"', "line 1"),
        (b"[" * 2000 + b"]" * 2000, "depth"),
        # Past what the duplicate check (1,000) and pydantic (200) read, not orjson (1,024):
        # a RecursionError (500) and a 422 "body: Invalid JSON" before.
        (b'{"title": "x", "content": ' + b"[" * 1000 + b"]" * 1000 + b"}", "recursion"),
        (b'{"title": "x", "content": ' + b"[" * 250 + b"]" * 250 + b"}", "recursion"),
    ]
    for body, reason in cases:
        status, answer = await send(gw, headers, "POST", "/api/v1/portals", body)
        assert status == 400, (body[:40], answer)
        assert answer["error"]["code"] == "invalid_json", answer
        assert reason in answer["error"]["message"], (reason, answer)
    assert not backend.portals
    # JSON that is not an object is a value the schema refuses, said so.
    for body in (b"[]", b'"Acme"', b"null", b"5"):
        status, answer = await send(gw, headers, "POST", "/api/v1/portals", body)
        assert status == 422 and answer["error"]["code"] == "invalid_input", answer
        assert answer["error"]["message"].startswith("body: "), answer
    # A UTF-8 byte order mark, which RFC 8259 lets a reader ignore, is ignored.
    status, answer = await send(
        gw, headers, "POST", "/api/v1/portals", b'\xef\xbb\xbf{"title": "A"}'
    )
    assert status == 201 and answer["title"] == "A", answer


async def test_a_query_parameter_given_twice_is_refused(gw: TestClient, backend: Backend) -> None:
    await admin_headers(gw, backend)
    for path, name in (
        ("/api/v1/portals?status=active&status=archived", "status"),
        ("/api/v1/invitations?status=pending&status=revoked", "status"),
        ("/api/v1/invitations?email=a@example.com&email=b@example.com", "email"),
        ("/api/v1/users?limit=5&limit=500", "limit"),
        ("/api/v1/activity?action=portal.created&action=key.created", "action"),
    ):
        response = await gw.get(path)
        answer = await response.json()
        assert response.status == 422, (path, answer)
        assert answer["error"] == {
            "code": "repeated_parameter",
            "message": f"{name}: given more than once; give each parameter once.",
        }


async def test_an_integer_query_parameter_is_digits_alone(gw: TestClient, backend: Backend) -> None:
    """A page size was read as pydantic reads text: ``+5``, `` 5``, ``5.0`` were 5 and
    ``1_0`` was 10, where the JSON body takes only a JSON integer."""
    await admin_headers(gw, backend)
    lists = ("/api/v1/portals", "/api/v1/invitations", "/api/v1/users", "/api/v1/activity")
    for value in (
        "%2B5",
        "+5",
        "%205",
        "5%20",
        "5.0",
        "1_0",
        "0x10",
        "%D9%A1%D9%A2",
        "%EF%BC%95",
        "5%0A",
    ):
        for path in lists:
            response = await gw.get(f"{path}?limit={value}")
            answer = await response.json()
            assert response.status == 422, (path, value, answer)
            assert answer["error"] == {
                "code": "invalid_input",
                "message": "limit: Input should be a whole number, in the digits 0-9 alone",
            }, (path, value)
    # Out of range is said as before; digits alone are read.
    response = await gw.get("/api/v1/portals?limit=-5")
    assert (await response.json())["error"]["message"] == (
        "limit: Input should be greater than or equal to 1"
    )
    for value in ("5", "05", "200"):
        response = await gw.get(f"/api/v1/portals?limit={value}")
        assert response.status == 200, value


async def test_a_boolean_query_parameter_is_true_or_false(gw: TestClient, backend: Backend) -> None:
    """``?dry_run=`` was read as pydantic reads text: yes, on, 1, True, ... were a preview
    and no, off, 0 a send, where the JSON body takes only true and false."""
    headers = await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    batch = f"/api/v1/portals/{portal['id']}/invitations/batch"
    body = b'{"invitations": [{"email": "a@example.com"}]}'
    for value in ("1", "0", "yes", "no", "on", "off", "True", "FALSE", "t", "%20true", "true%0A"):
        status, answer = await send(gw, headers, "POST", f"{batch}?dry_run={value}", body)
        assert status == 422, (value, answer)
        assert answer["error"] == {
            "code": "invalid_input",
            "message": "dry_run: Input should be true or false",
        }, value
    for value in ("true", "false"):
        status, answer = await send(gw, headers, "POST", f"{batch}?dry_run={value}", body)
        assert status != 422, (value, answer)  # past the query (the fakes have no batch)


async def test_a_uuid_query_parameter_is_its_canonical_spelling(
    gw: TestClient, backend: Backend
) -> None:
    """``?portal_id=`` took any spelling Python's UUID() reads: in braces, without hyphens,
    as urn:uuid:…; now the 8-4-4-4-12 hexadecimal digits with hyphens, in either case."""
    await admin_headers(gw, backend)
    portal = backend.add_portal("Acme")
    backend.add_invitation("a@example.com", portal)
    canonical = portal["id"]
    for value in (
        "{" + canonical + "}",
        "%7B" + canonical + "%7D",
        canonical.replace("-", ""),
        "urn:uuid:" + canonical,
        "%20" + canonical,
        canonical + "%0A",
        canonical[:-1],
        canonical.replace("-", "", 1) + "0",
    ):
        for path in ("/api/v1/invitations", "/api/v1/activity"):
            response = await gw.get(f"{path}?portal_id={value}")
            answer = await response.json()
            assert response.status == 422, (path, value, answer)
            assert answer["error"] == {
                "code": "invalid_input",
                "message": "portal_id: Input should be a UUID: 32 hexadecimal digits in"
                " groups of 8-4-4-4-12 with hyphens",
            }, (path, value)
    for value in (canonical, canonical.upper()):
        response = await gw.get(f"/api/v1/invitations?portal_id={value}")
        answer = await response.json()
        assert response.status == 200, (value, answer)
        assert [i["email"] for i in answer["items"]] == ["a@example.com"], value
