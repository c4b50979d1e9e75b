"""Another system invites through the bus: it publishes ``invitation.requested`` with plain
aio-pika and hears ``invitation.created`` / ``invitation.rejected`` on its own queue."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import (
    Api,
    Listener,
    accept_from_email,
    admin_amqp_url,
    amqp_url,
    bus_prefix,
    envelope,
    eventually,
    listening,
    publish_event,
    publish_raw,
    unique_email,
)
from tests.support.smtp import accept_link
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "publish_invitation.py"


@pytest.fixture
async def outcomes(stack: Stack) -> AsyncIterator[Listener]:
    async with listening(stack, "invitation.*") as listener:
        yield listener


def request(**data: object) -> dict[str, object]:
    return envelope({"idempotency_key": f"crm-{uuid.uuid4().hex}", **data})


async def answer(outcomes: Listener, event: dict[str, object]) -> dict[str, object]:
    return await outcomes.wait_for(
        lambda e: (
            e["correlation_id"] == event["correlation_id"]
            and e["type"] in ("invitation.created", "invitation.resent", "invitation.rejected")
        ),
        f"the answer to {event['correlation_id']}",
    )


async def test_requested_makes_an_invitation_and_an_email(
    stack: Stack, api: Api, outcomes: Listener, browser: Browser
) -> None:
    portal = await api.portal(f"From CRM {uuid.uuid4().hex[:6]}")
    email = unique_email("crm")
    event = request(portal_slug=portal["slug"], email=email, invited_by="crm@agency.test")
    await publish_event(stack, event)

    created = await answer(outcomes, event)
    assert created["type"] == "invitation.created" and created["version"] == 1
    data = created["data"]
    assert isinstance(data, dict)
    assert data["portal_id"] == portal["id"] and data["email"] == email
    assert data["idempotency_key"] == event["data"]["idempotency_key"]  # type: ignore[index]
    assert data["invited_by"] == "crm@agency.test"
    code, url, _ = await accept_from_email(stack, browser, email)
    assert url.endswith(f"/client-portal/{portal['slug']}/"), url


async def test_same_idempotency_key_twice_at_once_makes_one_invitation(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    portal = await api.portal(f"Twice {uuid.uuid4().hex[:6]}")
    email = unique_email("dup")
    key = f"crm-{uuid.uuid4().hex}"
    first = envelope({"portal_id": portal["id"], "email": email, "idempotency_key": key})
    second = envelope({"portal_id": portal["id"], "email": email, "idempotency_key": key})
    assert first["id"] != second["id"]
    await asyncio.gather(publish_event(stack, first), publish_event(stack, second))

    async def both_consumed() -> bool | None:
        rows = await db_fetch(
            stack,
            "SELECT event_id FROM invitations.inbox WHERE event_id = ANY($1::uuid[])",
            [first["id"], second["id"]],
        )
        return True if len(rows) == 2 else None

    await eventually(both_consumed, "both requests consumed")
    await stack.sink.wait_for(email)
    rows = await db_fetch(
        stack,
        "SELECT id, send_count FROM invitations.invitations WHERE idempotency_key = $1",
        key,
    )
    assert len(rows) == 1 and rows[0]["send_count"] == 1
    mails = await db_fetch(
        stack, "SELECT mail_id FROM mailer.deliveries WHERE ref_id = $1", rows[0]["id"]
    )
    assert len(mails) == 1
    await outcomes.wait_for(
        lambda e: e["type"] == "invitation.created" and e["data"]["idempotency_key"] == key,
        "invitation.created",
    )
    for request in (first, second):
        # Each answer on its own: under load the relay may publish them in either order.
        await outcomes.wait_for(
            lambda e, r=request: (
                e["type"] == "invitation.created" and e["correlation_id"] == r["correlation_id"]
            ),
            "an answer to each request",
        )
    created = [
        e for e in outcomes.events("invitation.created") if e["data"]["idempotency_key"] == key
    ]
    # Each request is answered under its own correlation id, both naming the one invitation.
    assert {e["correlation_id"] for e in created} == {
        first["correlation_id"],
        second["correlation_id"],
    }
    assert {e["data"]["invitation_id"] for e in created} == {str(rows[0]["id"])}


async def test_rejections_carry_a_reason(stack: Stack, api: Api, outcomes: Listener) -> None:
    active = await api.portal(f"Active {uuid.uuid4().hex[:6]}")
    pending = await api.portal(f"Pending {uuid.uuid4().hex[:6]}", status="pending")
    users = await db_fetch(
        stack, "SELECT id FROM identity.users WHERE email = $1", "admin@example.com"
    )
    code, body = await api.call(
        "PUT", f"/portals/{active['id']}/client", {"user_id": str(users[0]["id"])}
    )
    assert code == 200, body

    cases = {
        "portal_not_found": request(
            portal_slug=f"no-such-{uuid.uuid4().hex[:6]}", email=unique_email()
        ),
        "portal_not_active": request(portal_id=pending["id"], email=unique_email()),
        "invalid_email": request(portal_slug=active["slug"], email="a@x.com\r\nBcc: b@y.com"),
        "already_has_access": request(portal_slug=active["slug"], email="admin@example.com"),
    }
    for event in cases.values():
        await publish_event(stack, event)
    for reason, event in cases.items():
        rejected = await answer(outcomes, event)
        assert rejected["type"] == "invitation.rejected", rejected
        data = rejected["data"]
        assert isinstance(data, dict)
        assert data["reason"] == reason and data["message"], data
        assert data["idempotency_key"] == event["data"]["idempotency_key"]  # type: ignore[index]
    rows = await db_fetch(
        stack,
        "SELECT id FROM invitations.invitations WHERE idempotency_key = ANY($1::text[])",
        [e["data"]["idempotency_key"] for e in cases.values()],  # type: ignore[index]
    )
    assert rows == []


async def test_a_request_for_a_pending_invitation_resends_it(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    portal = await api.portal(f"Pending Already {uuid.uuid4().hex[:6]}")
    email = unique_email("pending")
    code, body = await api.invite(portal["id"], email)
    assert code == 201, body
    event = request(portal_id=portal["id"], email=email)
    await publish_event(stack, event)
    resent = await answer(outcomes, event)
    assert resent["type"] == "invitation.resent", resent
    assert resent["data"]["invitation_id"] == body["invitation"]["id"]  # type: ignore[index]
    messages = await stack.sink.wait_for(email, count=2)
    assert accept_link(messages[0]) != accept_link(messages[1])


async def _dead_letters(stack: Stack, ids: set[str]) -> dict[str, bytes]:
    """Take the messages with these ids from the dead-letter queue of integration requests."""
    found: dict[str, bytes] = {}
    # An operator looks at the dead letters; an integration may not.
    connection = await aio_pika.connect(admin_amqp_url(stack))
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(
            f"{bus_prefix(stack)}.invitations.requests.dead", ensure=True
        )
        for _ in range(200):
            message = await queue.get(fail=False, no_ack=False)
            if message is None:
                break
            if message.message_id in ids:
                found[message.message_id] = message.body
                await message.ack()
            else:
                await message.nack(requeue=True)
            if len(found) == len(ids):
                break
    finally:
        await connection.close()
    return found


async def test_malformed_messages_are_dead_lettered_and_the_queue_moves_on(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    portal = await api.portal(f"Poison {uuid.uuid4().hex[:6]}")
    not_json = str(uuid.uuid4())
    await publish_raw(stack, b"{this is not json", message_id=not_json)
    future = request(portal_slug=portal["slug"], email=unique_email("v99"))
    future["version"] = 99
    await publish_event(stack, future)
    email = unique_email("after-poison")
    good = request(portal_slug=portal["slug"], email=email)
    await publish_event(stack, good)

    assert (await answer(outcomes, good))["type"] == "invitation.created"
    await stack.sink.wait_for(email)

    ids = {not_json, str(future["id"])}
    got: dict[str, bytes] = {}

    async def dead() -> bool | None:
        got.update(await _dead_letters(stack, ids - set(got)))
        return True if set(got) == ids else None

    await eventually(dead, "both poison messages in the dead-letter queue")
    assert got[not_json] == b"{this is not json"
    assert orjson.loads(got[str(future["id"])])["version"] == 99
    log = Path(stack["invitations"].log_path).read_text()
    assert "event_malformed_dead_lettered" in log and "version 99" in log


async def test_a_listener_on_every_public_event_never_sees_a_token(
    stack: Stack, api: Api, browser: Browser
) -> None:
    async with listening(stack, "#", url=admin_amqp_url(stack)) as everything:
        portal = await api.portal(f"Watched {uuid.uuid4().hex[:6]}")
        email = unique_email("watched")
        event = request(portal_slug=portal["slug"], email=email)
        await publish_event(stack, event)
        first = accept_link((await stack.sink.wait_for(email))[-1])
        created = await answer(everything, event)
        invitation_id = created["data"]["invitation_id"]  # type: ignore[index]
        code, _ = await api.call("POST", f"/invitations/{invitation_id}/resend")
        assert code == 200
        second = accept_link((await stack.sink.wait_for(email, count=2))[-1])
        await accept_from_email(stack, browser, email)
        await everything.wait_for(
            lambda e: (
                e["type"] == "invitation.accepted" and e["data"]["invitation_id"] == invitation_id
            ),
            "invitation.accepted",
        )
        await everything.wait_for(
            lambda e: e["type"] == "mail.sent" and e["data"]["ref_id"] == invitation_id,
            "mail.sent",
        )
    tokens = [link.split("token=", 1)[1] for link in (first, second)]
    assert tokens[0] != tokens[1]
    seen = {key for key, _, _ in everything.messages}
    assert {"invitation.requested", "invitation.created", "invitation.resent"} <= seen
    assert "mail.requested" not in seen
    for key, body, headers in everything.messages:
        text = body.decode() + repr(headers)
        assert "token=" not in text and "/invitations/accept" not in text, key
        assert not any(t in text for t in tokens), key


async def _run_example(stack: Stack, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--amqp-url",
        amqp_url(stack),
        "--prefix",
        bus_prefix(stack),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_example_publisher_works_against_the_stack(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Example {uuid.uuid4().hex[:6]}")
    email = unique_email("example")
    key = f"example-{uuid.uuid4().hex}"
    args = ("--portal-slug", portal["slug"], "--email", email, "--idempotency-key", key)
    code, out = await _run_example(stack, *args)
    assert code == 0, out
    assert "invitation.created" in out and email in out, out
    await stack.sink.wait_for(email)
    rows = await db_fetch(
        stack, "SELECT id FROM invitations.invitations WHERE idempotency_key = $1", key
    )
    assert len(rows) == 1 and str(rows[0]["id"]) in out

    code, out = await _run_example(
        stack,
        "--portal-slug",
        f"no-such-{uuid.uuid4().hex[:6]}",
        "--email",
        unique_email("example"),
        "--idempotency-key",
        f"example-{uuid.uuid4().hex}",
    )
    assert code == 1, out
    assert "invitation.rejected" in out and "portal_not_found" in out, out


async def test_the_example_publisher_by_portal_id_retried_and_resent(
    stack: Stack, api: Api
) -> None:
    """docs/inviting-from-other-systems.md: --portal-id instead of --portal-slug; a retry
    with the same key is answered invitation.created again (the same invitation, no second
    email); another key for the pending address resends it; both exit 0."""
    portal = await api.portal(f"Example id {uuid.uuid4().hex[:6]}")
    email = unique_email("example-id")
    key = f"example-{uuid.uuid4().hex}"
    args = ("--portal-id", portal["id"], "--email", email, "--idempotency-key", key)
    options = ("--expires-in-days", "14", "--personal-message", "Hi Jane", "--locale", "de")
    code, first = await _run_example(stack, *args, "--invited-by", "crm@agency.test", *options)
    assert code == 0 and "invitation.created" in first, first
    rows = await db_fetch(
        stack,
        "SELECT expires_in_days, personal_message, locale FROM invitations.invitations"
        " WHERE idempotency_key = $1",
        key,
    )
    assert [tuple(r) for r in rows] == [(14, "Hi Jane", "de")], rows
    code, again = await _run_example(stack, *args)
    assert code == 0 and "invitation.created" in again, again
    invitation_id = first.split("invitation_id=")[1].split()[0]
    assert f"invitation_id={invitation_id}" in again, again
    other = ("--portal-id", portal["id"], "--email", email, "--idempotency-key", f"{key}-2")
    code, resent = await _run_example(stack, *other)
    assert code == 0 and "invitation.resent" in resent, resent
    assert f"invitation_id={invitation_id}" in resent, resent


async def test_documented_request_shapes(stack: Stack, api: Api, outcomes: Listener) -> None:
    """The table of docs/inviting-from-other-systems.md: a null or missing email is
    answered invalid_email, no portal missing_portal, and a slug in any case naming the
    same portal as portal_id is no ambiguity."""
    portal = await api.portal(f"Shapes {uuid.uuid4().hex[:6]}")
    rejected = {
        "invalid_email": [
            request(portal_slug=portal["slug"], email=None),
            request(portal_slug=portal["slug"]),
            request(portal_slug=portal["slug"], email="a@x.com, b@y.com"),
            request(portal_slug=portal["slug"], email="Alice <a@x.com>"),
            request(portal_slug=portal["slug"], email=""),
        ],
        "missing_portal": [request(email=unique_email())],
    }
    same = request(portal_id=portal["id"], portal_slug=portal["slug"].upper(), email=unique_email())
    for events in rejected.values():
        for event in events:
            await publish_event(stack, event)
    await publish_event(stack, same)
    for reason, events in rejected.items():
        for event in events:
            got = await answer(outcomes, event)
            assert got["type"] == "invitation.rejected", got
            assert got["data"]["reason"] == reason, got  # type: ignore[index]
    got = await answer(outcomes, same)
    assert got["type"] == "invitation.created", got
    assert got["data"]["portal_id"] == portal["id"], got  # type: ignore[index]


async def test_documented_options_and_their_rejections(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    """Each optional field of the doc's table, and the reason its bad value is answered
    with; the rejection names the request's email and portal_slug."""
    portal = await api.portal(f"Options {uuid.uuid4().hex[:6]}")
    slug = portal["slug"]
    cases = {
        "invalid_expires_in_days": request(
            portal_slug=slug, email=unique_email(), expires_in_days=8
        ),
        "invalid_locale": request(portal_slug=slug, email=unique_email(), locale="it"),
        "invalid_character": request(
            portal_slug=slug, email=unique_email(), invited_by="Ann \u202eevil"
        ),
        "personal_message_too_long": request(
            portal_slug=slug, email=unique_email(), personal_message="x" * 1001
        ),
    }
    email = unique_email("options")
    good = request(
        portal_slug=slug,
        email=email,
        expires_in_days=14,
        locale="de",
        sub_client=True,
        personal_message="x" * 1000,
    )
    for event in (*cases.values(), good):
        await publish_event(stack, event)
    for reason, event in cases.items():
        got = await answer(outcomes, event)
        data = got["data"]
        assert isinstance(data, dict)
        assert got["type"] == "invitation.rejected" and data["reason"] == reason, got
        assert data["email"] == event["data"]["email"], got  # type: ignore[index]
        assert data["portal_slug"] == slug, got
    got = await answer(outcomes, good)
    data = got["data"]
    assert isinstance(data, dict)
    assert got["type"] == "invitation.created", got
    assert data["expires_in_days"] == 14 and data["sub_client"] is True, got
    assert "personal_message" not in data, got

    # The same key with the address in another case is a retry, not a reuse.
    again = envelope({**good["data"], "email": email.upper()})  # type: ignore[dict-item]
    await publish_event(stack, again)
    got_again = await answer(outcomes, again)
    assert got_again["type"] == "invitation.created", got_again
    assert got_again["data"]["invitation_id"] == data["invitation_id"]  # type: ignore[index]


async def test_documented_limits_dead_letter_the_request(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    """The guide's bounds: correlation_id 1-100 characters, idempotency_key 1-200, no NUL
    in any text; a request past them can never be processed and is dead-lettered."""
    portal = await api.portal(f"Bounds {uuid.uuid4().hex[:6]}")
    slug = portal["slug"]
    long_correlation = envelope(
        {"portal_slug": slug, "email": unique_email(), "idempotency_key": f"k-{uuid.uuid4().hex}"},
        correlation_id="c" * 101,
    )
    long_key = request(portal_slug=slug, email=unique_email(), idempotency_key="k" * 201)
    nul = request(portal_slug=slug, email=unique_email(), invited_by="Ann\u0000")
    bad = [long_correlation, long_key, nul]
    for event in bad:
        await publish_event(stack, event)
    good = request(portal_slug=slug, email=unique_email("after-bounds"))
    await publish_event(stack, good)
    assert (await answer(outcomes, good))["type"] == "invitation.created"

    ids = {str(e["id"]) for e in bad}
    got: dict[str, bytes] = {}

    async def dead() -> bool | None:
        got.update(await _dead_letters(stack, ids - set(got)))
        return True if set(got) == ids else None

    await eventually(dead, "the three requests past the bounds in the dead-letter queue")


async def test_an_integration_key_shares_the_bus_requests_idempotency_keys(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    """README "JSON API": an integration key with only invitations:write; the
    Idempotency-Key takes "the same keys as invitation.requested's", so a CRM that asked on
    the bus and retries over HTTP gets the same invitation, and another address 409."""
    code, made = await api.call(
        "POST", "/keys", {"name": f"CRM {uuid.uuid4().hex[:6]}", "scopes": ["invitations:write"]}
    )
    assert code == 201, made
    portal = await api.portal(f"Keys {uuid.uuid4().hex[:6]}")
    email = unique_email("key")
    event = request(portal_slug=portal["slug"], email=email)
    await publish_event(stack, event)
    created = await answer(outcomes, event)
    assert created["type"] == "invitation.created", created
    key = event["data"]["idempotency_key"]  # type: ignore[index]

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {made['key']}"}) as http:
        base = stack.public_url + "/api/v1"
        async with http.get(base + "/portals") as response:
            body = await response.json()
            assert response.status == 403, body
            assert body["error"]["code"] == "insufficient_scope", body
        url = f"{base}/portals/{portal['id']}/invitations"
        async with http.post(url, json={"email": email}, headers={"Idempotency-Key": key}) as r:
            body = await r.json()
            assert r.status in (200, 201), body
            assert body["invitation"]["id"] == created["data"]["invitation_id"], body  # type: ignore[index]
        other = {"email": unique_email("key-other")}
        async with http.post(url, json=other, headers={"Idempotency-Key": key}) as r:
            body = await r.json()
            assert r.status == 409, body
            assert body["error"]["code"] == "idempotency_key_reused", body


async def test_a_resend_by_request_keeps_or_replaces_the_options_as_documented(
    stack: Stack, api: Api, outcomes: Listener
) -> None:
    """ "An expires_in_days or personal_message given with that request replaces the pending
    invitation's; left out, the pending invitation keeps its own." And a retry of the
    resending request is answered invitation.resent again."""
    portal = await api.portal(f"Resend options {uuid.uuid4().hex[:6]}")
    email = unique_email("resend-options")
    slug = portal["slug"]
    first = request(portal_slug=slug, email=email, expires_in_days=14, personal_message="one")
    kept = request(portal_slug=slug, email=email)
    replaced = request(portal_slug=slug, email=email, expires_in_days=7, personal_message="two")

    async def send(event: dict[str, object]) -> dict[str, object]:
        await publish_event(stack, event)
        got = await answer(outcomes, event)
        data = got["data"]
        assert isinstance(data, dict)
        return {"type": got["type"], **data}

    async def stored() -> list[tuple[object, ...]]:
        rows = await db_fetch(
            stack,
            "SELECT expires_in_days, personal_message FROM invitations.invitations"
            " WHERE portal_id = $1",
            uuid.UUID(portal["id"]),
        )
        return [tuple(r) for r in rows]

    made = await send(first)
    assert made["type"] == "invitation.created" and made["expires_in_days"] == 14, made
    got = await send(kept)
    assert got["type"] == "invitation.resent" and got["reason"] == "invitation_requested", got
    assert got["expires_in_days"] == 14 and got["invitation_id"] == made["invitation_id"], got
    assert got["idempotency_key"] == first["data"]["idempotency_key"], got  # type: ignore[index]
    assert await stored() == [(14, "one")]
    got = await send(replaced)
    assert got["type"] == "invitation.resent" and got["expires_in_days"] == 7, got
    assert await stored() == [(7, "two")]
    retry = envelope(dict(replaced["data"]))  # type: ignore[arg-type]
    got = await send(retry)
    assert got["type"] == "invitation.resent" and got["expires_in_days"] == 7, got
