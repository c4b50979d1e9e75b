"""Events in, through the real broker into the running app's consumer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.events import (
    EventData,
    InvitationRequested,
    MailFailed,
    MailRetrying,
    MailSent,
    PortalChanged,
    make_event,
)
from services.invitations.api import DEPS
from services.invitations.handlers import clear_closed_once
from tests.invitations.conftest import Clock, World, only_first_looks, outbox_events
from tests.support.env import TestEnv
from tests.support.management import management_client
from tests.support.owners import OwnersBus

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
T = TypeVar("T")


class Publish:
    """Publishes as the owner of each event type (invitation.requested: as invitations,
    which may send it like any integration), and remembers what it sent so a test can
    wait until the consumer has applied all of it (it handles messages concurrently, so
    one event applied says nothing of those published before it)."""

    def __init__(self, owners: OwnersBus) -> None:
        self.owners = owners
        self.sent: list[uuid.UUID] = []

    async def __call__(
        self, event_type: str, data: EventData | None = None, *, raw: bytes | None = None
    ) -> str:
        correlation_id = uuid.uuid4().hex
        if raw is None:
            assert data is not None
            envelope = make_event(event_type, data, source="test", correlation_id=correlation_id)
            self.sent.append(envelope.id)
            raw = envelope.to_json()
        await self.owners.publish(
            "events",
            event_type,
            raw,
            message_id=uuid.uuid4().hex,
            correlation_id=None,
            type=event_type,
        )
        return correlation_id

    async def settled(self, pool: asyncpg.Pool) -> None:
        """Every event sent so far has been applied (its inbox row committed)."""

        async def all_applied() -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", self.sent
            )
            return bool(count == len(self.sent))

        await eventually(all_applied)


@pytest.fixture
async def publish(migrated_schemas: TestEnv) -> AsyncIterator[Publish]:
    owners = OwnersBus(migrated_schemas)
    await owners.connect()
    yield Publish(owners)
    await owners.close()


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def portal_changed(portal_id: uuid.UUID, revision: int, **extra: Any) -> PortalChanged:
    values: dict[str, Any] = {
        "portal_id": portal_id,
        "slug": f"p-{portal_id.hex[:8]}",
        "title": f"Title r{revision}",
        "status": "active",
        "revision": revision,
    }
    values.update(extra)
    return PortalChanged(**values)


async def test_portal_events_keep_the_replica_newest_first(
    client: Client, pool: asyncpg.Pool, publish: Publish
) -> None:
    portal_id = uuid.uuid4()
    await publish("portal.created", portal_changed(portal_id, 1))
    await publish("portal.updated", portal_changed(portal_id, 3, status="archived"))
    await publish("portal.updated", portal_changed(portal_id, 2, title="late"))

    async def at_revision_3() -> asyncpg.Record | None:
        row = await pool.fetchrow("SELECT * FROM portals WHERE portal_id = $1", portal_id)
        return row if row is not None and row["revision"] == 3 else None

    row = await eventually(at_revision_3)
    assert row["status"] == "archived" and row["title"] == "Title r3"
    await publish.settled(pool)  # the stale revision 2 too
    assert await pool.fetchval("SELECT revision FROM portals WHERE portal_id = $1", portal_id) == 3


async def test_mail_outcomes_set_delivery_of_the_latest_send(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    portal = world.add_portal()
    response = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": "deliver@example.com"}
    )
    inv_id = uuid.UUID((await response.json())["invitation"]["id"])
    first_mail = await pool.fetchval("SELECT last_mail_id FROM invitations WHERE id = $1", inv_id)
    await client.post(f"/invitations/{inv_id}/resend")
    second_mail = await pool.fetchval("SELECT last_mail_id FROM invitations WHERE id = $1", inv_id)
    assert first_mail != second_mail

    await publish(
        "mail.failed",
        MailFailed(
            mail_id=first_mail,
            template="invitation",
            ref_type="invitation",
            ref_id=inv_id,
            reason="550 no such user",
            attempts=1,
        ),
    )
    await publish(
        "mail.sent",
        MailSent(mail_id=second_mail, template="invitation", ref_type="invitation", ref_id=inv_id),
    )

    async def sent() -> bool:
        response = await client.get(f"/invitations/{inv_id}")
        return bool((await response.json())["delivery"] == "sent")

    await eventually(sent)
    await publish(
        "mail.failed",
        MailFailed(
            mail_id=second_mail,
            template="invitation",
            ref_type="invitation",
            ref_id=inv_id,
            reason="bounced later",
            attempts=8,
        ),
    )

    async def failed() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await client.get(f"/invitations/{inv_id}")).json()
        return body if body["delivery"] == "failed" else None

    body = await eventually(failed)
    assert body["delivery_error"] == "bounced later"


def retrying(inv_id: uuid.UUID, mail_id: uuid.UUID, attempt: int, at: datetime) -> MailRetrying:
    return MailRetrying(
        mail_id=mail_id,
        template="invitation",
        ref_type="invitation",
        ref_id=inv_id,
        attempt=attempt,
        next_attempt_at=at,
        reason="smtp_unreachable",
    )


async def test_a_retrying_send_shows_its_next_try_until_it_is_sent(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    portal = world.add_portal()
    response = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": "patient@example.com"}
    )
    inv_id = uuid.UUID((await response.json())["invitation"]["id"])
    mail_id = await pool.fetchval("SELECT last_mail_id FROM invitations WHERE id = $1", inv_id)
    soon = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    await publish("mail.retrying", retrying(inv_id, mail_id, 2, soon))

    async def waiting() -> dict[str, Any] | None:
        body: dict[str, Any] = await (await client.get(f"/invitations/{inv_id}")).json()
        return body if body["delivery"] == "retrying" else None

    body = await eventually(waiting)
    assert datetime.fromisoformat(body["delivery_next_attempt_at"]) == soon
    assert body["delivery_error"] == "smtp_unreachable"
    listed = await (await client.get(f"/invitations?portal_id={portal['id']}")).json()
    assert listed["items"][0]["delivery_next_attempt_at"] == body["delivery_next_attempt_at"]

    # Out of order: an earlier try's announcement, then a later one.
    await publish("mail.retrying", retrying(inv_id, mail_id, 1, soon - timedelta(minutes=1)))
    later = soon + timedelta(minutes=5)
    await publish("mail.retrying", retrying(inv_id, mail_id, 3, later))

    async def moved_on() -> dict[str, Any] | None:
        found = await waiting()
        return (
            found
            if found and found["delivery_next_attempt_at"] != body["delivery_next_attempt_at"]
            else None
        )

    body = await eventually(moved_on)
    assert datetime.fromisoformat(body["delivery_next_attempt_at"]) == later

    await publish(
        "mail.sent",
        MailSent(mail_id=mail_id, template="invitation", ref_type="invitation", ref_id=inv_id),
    )
    # A retry announced late never undoes the outcome.
    await publish("mail.retrying", retrying(inv_id, mail_id, 4, later + timedelta(hours=1)))
    await publish.settled(pool)  # the late announcement too
    body = await (await client.get(f"/invitations/{inv_id}")).json()
    assert body["delivery"] == "sent"
    assert body["delivery_next_attempt_at"] is None and body["delivery_error"] is None

    # Resend: a new mail job, queued again.
    await client.post(f"/invitations/{inv_id}/resend")
    body = await (await client.get(f"/invitations/{inv_id}")).json()
    assert body["delivery"] == "queued" and body["delivery_next_attempt_at"] is None


async def test_invitation_requested_by_slug_creates(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    portal = world.add_portal()
    key = f"crm-{uuid.uuid4().hex}"
    correlation_id = await publish(
        "invitation.requested",
        InvitationRequested(
            portal_slug=portal["slug"],
            email="Via.Crm@Example.com",
            idempotency_key=key,
            sub_client=True,
            invited_by="CRM",
            expires_in_days=30,
            personal_message="Welcome aboard, from the CRM.",
            locale="fr",
        ),
    )
    row = await eventually(
        lambda: pool.fetchrow("SELECT * FROM invitations WHERE idempotency_key = $1", key)
    )
    assert row["email"] == "Via.Crm@example.com" and row["sub_client"] is True
    assert row["expires_in_days"] == 30 and row["expires_at"] - row["sent_at"] == timedelta(days=30)
    assert row["personal_message"] == "Welcome aboard, from the CRM."
    events = dict(await outbox_events(pool, str(row["id"])))
    created = events["invitation.created"]
    assert created["correlation_id"] == correlation_id
    assert created["data"]["idempotency_key"] == key
    assert created["data"]["expires_in_days"] == 30
    assert row["locale"] == "fr" and created["data"]["locale"] == "fr"
    assert events["mail.requested"]["data"]["locale"] == "fr"
    assert events["mail.requested"]["data"]["context"]["personal_message"] == (
        "Welcome aboard, from the CRM."
    )


async def test_who_invited_is_one_line_whoever_sent_it(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """The email's first sentence names the inviter: another system's line breaks there
    added lines of its own to our email (the JSON API already made it one line)."""
    portal = world.add_portal()
    key = f"crm-{uuid.uuid4().hex}"
    await publish(
        "invitation.requested",
        InvitationRequested(
            portal_slug=portal["slug"],
            email=f"one-line-{uuid.uuid4().hex[:8]}@example.com",
            idempotency_key=key,
            invited_by="Ann\r\n\r\nBcc: x@evil.example\u2028Your account is\x1b[31m locked",
        ),
    )
    row = await eventually(
        lambda: pool.fetchrow("SELECT * FROM invitations WHERE idempotency_key = $1", key)
    )
    one_line = "Ann Bcc: x@evil.example Your account is [31m locked"
    assert row["invited_by"] == one_line
    events = dict(await outbox_events(pool, str(row["id"])))
    assert events["invitation.created"]["data"]["invited_by"] == one_line
    assert events["mail.requested"]["data"]["context"]["invited_by"] == one_line


async def test_real_names_keep_the_characters_their_writing_needs(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """A Persian name's ZWNJ, a Hindi conjunct's ZWJ, an emoji sequence and a Hebrew
    RLM are writing, not tricks: kept. Invisible characters around them go. (Before, every
    format character became a space: "مریم زاده", "👩 💻".)"""
    portal = world.add_portal()
    key = f"crm-{uuid.uuid4().hex}"
    await publish(
        "invitation.requested",
        InvitationRequested(
            portal_slug=portal["slug"],
            email=f"names-{uuid.uuid4().hex[:8]}@example.com",
            idempotency_key=key,
            invited_by="\ufeffمریم\u200cزاده \u0915\u094d\u200d\u0937 👩\u200d💻 שרה\u200f\u200b",  # noqa: RUF001
            personal_message="می\u200cخواهم \u2067שלום\u2069\u2028👍🏽",  # noqa: RUF001
        ),
    )
    row = await eventually(
        lambda: pool.fetchrow("SELECT * FROM invitations WHERE idempotency_key = $1", key)
    )
    name = "مریم\u200cزاده \u0915\u094d\u200d\u0937 👩\u200d💻 שרה\u200f"  # noqa: RUF001
    assert row["invited_by"] == name
    assert row["personal_message"] == "می\u200cخواهم \u2067שלום\u2069\n👍🏽"  # noqa: RUF001
    events = dict(await outbox_events(pool, str(row["id"])))
    assert events["mail.requested"]["data"]["context"]["invited_by"] == name


async def test_a_slug_in_capitals_or_with_its_id_names_the_portal(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    portal = world.add_portal()
    keys = [f"crm-{uuid.uuid4().hex}" for _ in range(2)]
    for key, names in zip(
        keys,
        (
            {"portal_slug": portal["slug"].upper()},
            {"portal_slug": portal["slug"], "portal_id": portal["id"]},
        ),
        strict=True,
    ):
        await publish(
            "invitation.requested",
            InvitationRequested(
                email=f"caps-{uuid.uuid4().hex[:8]}@example.com", idempotency_key=key, **names
            ),
        )
    for key in keys:
        row = await eventually(
            lambda key=key: pool.fetchrow(
                "SELECT * FROM invitations WHERE idempotency_key = $1", key
            )
        )
        assert str(row["portal_id"]) == str(portal["id"])


async def test_invitation_requested_reads_its_own_tables_once(
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key, the portal in the replica and the expiry setting in one look, as on the API
    path (a portal the replica lacks is then asked of portals). The key's invitation is
    read only when the key was used before: a repeat is still answered."""
    from services.invitations import repository as repo

    looks = only_first_looks(monkeypatch)
    by_key: list[str] = []
    real_find_by_key = repo.find_by_key

    async def find_by_key(db: Any, key: str) -> Any:
        by_key.append(key)
        return await real_find_by_key(db, key)

    monkeypatch.setattr(repo, "find_by_key", find_by_key)
    portal = world.add_portal()
    key = f"crm-once-{uuid.uuid4().hex}"
    request = InvitationRequested(
        portal_id=uuid.UUID(portal["id"]),
        email=f"once-{uuid.uuid4().hex[:8]}@example.com",
        idempotency_key=key,
    )
    await publish("invitation.requested", request)
    row = await eventually(
        lambda: pool.fetchrow("SELECT * FROM invitations WHERE idempotency_key = $1", key)
    )
    assert str(row["portal_id"]) == portal["id"]
    assert looks == [(key, uuid.UUID(portal["id"]), None)]
    assert by_key == []
    # The same request again (its sender lost our answer): the look says the key is taken.
    answers_before = await _created_answers(pool, key)
    await publish("invitation.requested", request)
    await eventually(lambda: _more_answers(pool, key, answers_before))
    assert by_key == [key] and len(looks) == 2
    assert (
        await pool.fetchval("SELECT count(*) FROM invitations WHERE idempotency_key = $1", key) == 1
    )


async def _created_answers(pool: asyncpg.Pool, key: str) -> int:
    return sum(t == "invitation.created" for t, _ in await outbox_events(pool, key))


async def _more_answers(pool: asyncpg.Pool, key: str, before: int) -> bool:
    return await _created_answers(pool, key) > before


async def test_a_run_of_requests_is_one_write_and_each_is_answered_as_its_own(
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests that arrive together share one transaction and one statement writes their
    first invitations; still each answer (invitation.created, invitation.rejected, a
    repeat's answer) and each mail job carries its own request's correlation id, and a
    refusal or a repeat in the middle of the run doesn't fail its neighbours."""
    from services.invitations import repository as repo

    portal = world.add_portal()
    # The portal in the replica first, so the run's checks need no database.
    warm = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": "warm@example.com"}
    )
    assert warm.status == 201
    sizes: list[int] = []
    real = repo.insert_firsts

    async def insert_firsts(db: Any, firsts: Any, reason: str) -> Any:
        sizes.append(len(firsts))
        if len(sizes) == 1:
            await asyncio.sleep(0.5)  # the others arrive meanwhile: the next run
        return await real(db, firsts, reason)

    monkeypatch.setattr(repo, "insert_firsts", insert_firsts)
    run = uuid.uuid4().hex[:8]
    asked: list[tuple[str, str, str]] = []  # (key, email, correlation id)
    for i in range(12):
        key, email = f"crm-run-{run}-{i}", f"run-{run}-{i}@example.com"
        if i == 5:
            email = "not an address"
        if i == 8:  # the same request as the third, again (its sender retried at once)
            key, email = asked[2][0], asked[2][1]
        request = InvitationRequested(
            portal_id=uuid.UUID(portal["id"]), email=email, idempotency_key=key
        )
        asked.append((key, email, await publish("invitation.requested", request)))

    async def all_answered() -> bool:
        answers = [await outbox_events(pool, key) for key, _, _ in asked]
        return all(answers) and len(await outbox_events(pool, asked[2][0])) >= 2

    await eventually(all_answered)
    assert max(sizes) > 1, sizes
    for i, (key, _, correlation_id) in enumerate(asked):
        answers = await outbox_events(pool, key)
        mine = [(t, e) for t, e in answers if e["correlation_id"] == correlation_id]
        if i == 5:
            assert [t for t, _ in mine] == ["invitation.rejected"]
            assert mine[0][1]["data"]["reason"] == "invalid_email"
            continue
        # The first request and its repeat: one answer each, under each one's id.
        assert [t for t, _ in mine] == ["invitation.created"], (i, answers)
        if i in (2, 8):
            continue
        invitation_id = mine[0][1]["data"]["invitation_id"]
        jobs = [e for t, e in await outbox_events(pool, invitation_id) if t == "mail.requested"]
        assert [job["correlation_id"] for job in jobs] == [correlation_id], i
    rows = await pool.fetch(
        "SELECT idempotency_key, send_count FROM invitations WHERE idempotency_key LIKE $1",
        f"crm-run-{run}-%",
    )
    assert sorted(r["idempotency_key"] for r in rows) == sorted(
        key for i, (key, _, _) in enumerate(asked) if i not in (5, 8)
    )
    assert all(r["send_count"] == 1 for r in rows)


async def test_a_run_of_requests_while_identity_is_down_waits_and_is_never_refused(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """Identity unreachable is not the request's fault: a run of requests whose checks
    all meet it is held and retried (the consumer waits out a dependency that is away),
    never answered invitation.rejected; once identity is back each is created once."""
    portal = world.add_portal()
    warm = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": "warm-down@example.com"}
    )
    assert warm.status == 201  # the portal in the replica: the run's checks go at once
    run = uuid.uuid4().hex[:8]
    keys = [f"crm-down-{run}-{i}" for i in range(4)]
    world.identity_down = True
    try:
        for i, key in enumerate(keys):
            request = InvitationRequested(
                portal_id=uuid.UUID(portal["id"]),
                email=f"down-{run}-{i}@example.com",
                idempotency_key=key,
            )
            await publish("invitation.requested", request)
        await asyncio.sleep(1.5)
        answers = [t for key in keys for t, _ in await outbox_events(pool, key)]
        assert answers == [], answers
    finally:
        world.identity_down = False

    async def all_created() -> bool:
        answers = [[t for t, _ in await outbox_events(pool, key)] for key in keys]
        return all(types == ["invitation.created"] for types in answers)

    await eventually(all_created, timeout=30.0)
    assert await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE idempotency_key = ANY($1::text[])", keys
    ) == len(keys)


@pytest.mark.parametrize(
    ("reason", "request_data"),
    [
        ("portal_not_found", {"portal_id": str(uuid.uuid4())}),
        ("portal_not_found", {"portal_slug": "no-such-portal"}),
        ("missing_portal", {}),
        ("invalid_email", {"email": "Jane <jane@example.com>"}),
        ("portal_not_active", {"status": "pending"}),
        ("already_has_access", {"member": True}),
        ("invalid_expires_in_days", {"expires_in_days": 10}),
        ("personal_message_too_long", {"personal_message": "x" * 1001}),
        ("invalid_locale", {"locale": "klingon"}),
        # The From line's neighbour reads "Acme Support" then whatever the override turns.
        ("invalid_character", {"invited_by": "Acme Support\u202e moc.live@"}),
        ("invalid_character", {"invited_by": "Ann \u2067Bank\u2069"}),
        ("invalid_character", {"personal_message": "Pay to \u202eIBAN 4321\nthanks"}),
        ("invalid_character", {"portal_ids": ["P"], "invited_by": "\u202dAnn"}),
        # Two names for the portal that disagree: neither wins.
        ("ambiguous_portal", {"portal_slug": "another-portal", "also_id": True}),
    ],
)
async def test_invitation_requested_rejections(
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    reason: str,
    request_data: dict[str, Any],
) -> None:
    portal = world.add_portal(status=request_data.pop("status", "active"))
    email = request_data.pop("email", f"rej-{uuid.uuid4().hex[:8]}@example.com")
    if request_data.pop("member", False):
        world.add_user(email, portal["id"])
    if request_data.pop("also_id", False):
        request_data["portal_id"] = portal["id"]
    if request_data.get("portal_ids") == ["P"]:
        request_data["portal_ids"] = [portal["id"]]
    if (
        "portal_ids" not in request_data
        and "portal_id" not in request_data
        and "portal_slug" not in request_data
        and reason != "missing_portal"
    ):
        request_data["portal_id"] = portal["id"]
    key = f"rej-{uuid.uuid4().hex}"
    correlation_id = await publish(
        "invitation.requested",
        InvitationRequested(email=email, idempotency_key=key, **request_data),
    )

    async def rejected() -> list[tuple[str, dict[str, Any]]]:
        return [e for e in await outbox_events(pool, key) if e[0] == "invitation.rejected"]

    [(_, envelope)] = await eventually(rejected)
    assert envelope["data"]["reason"] == reason
    assert envelope["data"]["message"]
    assert envelope["correlation_id"] == correlation_id
    assert (
        await pool.fetchval("SELECT count(*) FROM invitations WHERE idempotency_key = $1", key) == 0
    )


def _raw_request(key: str, data: dict[str, object]) -> bytes:
    """An ``invitation.requested`` envelope as a program would write it, with whatever
    ``data`` holds (the typed model can't carry a wrong type)."""
    return orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": "invitation.requested",
            "version": 1,
            "occurred_at": "2026-12-03T06:00:00Z",
            "source": "crm",
            "correlation_id": f"crm-{key}",
            "data": data,
        }
    )


async def test_a_retried_request_that_resent_a_pending_invitation_is_answered_again(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """Inviting a person again resends their pending invitation, answered
    invitation.resent. The same request retried (its sender lost the answer, or the
    broker's confirm) sends nothing, and was never answered: the integration waited for
    ever. It is answered with that resend again, under its own correlation id."""
    portal = world.add_portal()
    email = f"again-{uuid.uuid4().hex[:8]}@example.com"
    made_key, again_key = f"made-{uuid.uuid4().hex}", f"again-{uuid.uuid4().hex}"

    def request(key: str) -> InvitationRequested:
        return InvitationRequested(email=email, portal_id=portal["id"], idempotency_key=key)

    await publish("invitation.requested", request(made_key))

    async def made() -> uuid.UUID | None:
        found = await pool.fetchval(
            "SELECT id FROM invitations WHERE idempotency_key = $1", made_key
        )
        return found if isinstance(found, uuid.UUID) else None

    invitation_id = str(await eventually(made))

    async def answer(correlation_id: str) -> list[dict[str, Any]]:
        return [
            envelope
            for event_type, envelope in await outbox_events(pool, invitation_id)
            if event_type == "invitation.resent" and envelope["correlation_id"] == correlation_id
        ]

    correlation_id = await publish("invitation.requested", request(again_key))
    [resent] = await eventually(lambda: answer(correlation_id))
    retried = await publish("invitation.requested", request(again_key))
    [again] = await eventually(lambda: answer(retried))
    assert again["data"]["invitation_id"] == invitation_id
    assert again["data"]["expires_at"] == resent["data"]["expires_at"]
    assert again["data"]["reason"] == "invitation_requested"
    mails = [t for t, _ in await outbox_events(pool, invitation_id) if t == "mail.requested"]
    assert len(mails) == 2  # the first link and the resend's: the retry sent nothing
    assert (
        await pool.fetchval(
            "SELECT send_count FROM invitations WHERE id = $1", uuid.UUID(invitation_id)
        )
        == 2
    )


async def test_a_request_without_an_email_is_answered(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """A CRM's contact without an address (null, or the field left out) is answered with
    invalid_email like a bad address, not dead-lettered without a word."""
    portal = world.add_portal()
    keys = [f"no-email-{uuid.uuid4().hex}" for _ in range(2)]
    sent = []
    for key, email in zip(keys, (None, "left out"), strict=True):
        data = {"portal_id": str(portal["id"]), "idempotency_key": key, "email": email}
        if email == "left out":
            del data["email"]
        await publish("invitation.requested", raw=_raw_request(key, data))
        sent.append(f"crm-{key}")
    for key, correlation_id in zip(keys, sent, strict=True):

        async def rejected(key: str = key) -> list[tuple[str, dict[str, Any]]]:
            return [e for e in await outbox_events(pool, key) if e[0] == "invitation.rejected"]

        [(_, answer)] = await eventually(rejected)
        assert answer["correlation_id"] == correlation_id
        assert answer["data"]["reason"] == "invalid_email"
        assert answer["data"]["message"] == (
            "Enter a single valid email address, like name@example.com."
        )
        assert answer["data"]["email"] is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("expires_in_days", 14.5, "invalid_expires_in_days"),
        ("expires_in_days", "two weeks", "invalid_expires_in_days"),
        ("expires_in_days", True, "invalid_expires_in_days"),
        ("expires_in_days", 1e30, "invalid_expires_in_days"),
        ("personal_message", "a" * 70_000, "personal_message_too_long"),
        ("email", "a" * 70_000 + "@example.com", "invalid_email"),
    ],
)
async def test_a_value_of_another_type_or_past_its_bound_is_answered(
    client: Client,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    field: str,
    value: object,
    reason: str,
) -> None:
    """The docs promise invalid_expires_in_days for a Link Expiry that is not 7, 14, 21 or
    30 and personal_message_too_long past 1,000 characters: 14.5, "two weeks" or a
    message of 70,000 characters (what a CRM's bug sends) were dead-lettered unanswered."""
    portal = world.add_portal()
    key = f"shape-{uuid.uuid4().hex}"
    data: dict[str, object] = {
        "portal_id": str(portal["id"]),
        "idempotency_key": key,
        "email": f"shape-{uuid.uuid4().hex[:8]}@example.com",
        field: value,
    }
    await publish("invitation.requested", raw=_raw_request(key, data))

    async def rejected() -> list[tuple[str, dict[str, Any]]]:
        return [e for e in await outbox_events(pool, key) if e[0] == "invitation.rejected"]

    [(_, answer)] = await eventually(rejected)
    assert answer["correlation_id"] == f"crm-{key}"
    assert answer["data"]["reason"] == reason


async def test_poison_message_is_dead_lettered_and_next_processed(
    client: Client, pool: asyncpg.Pool, publish: Publish, migrated_schemas: TestEnv
) -> None:
    await publish("invitation.requested", raw=b"this is not json")
    portal_id = uuid.uuid4()
    await publish("portal.created", portal_changed(portal_id, 1))
    await eventually(
        lambda: pool.fetchval("SELECT true FROM portals WHERE portal_id = $1", portal_id)
    )
    connection = await aio_pika.connect(migrated_schemas.amqp_url)
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(f"{migrated_schemas.bus_prefix}.invitations.requests.dead")

        async def poison() -> aio_pika.abc.AbstractIncomingMessage | None:
            while True:
                message = await dead.get(no_ack=True, fail=False)
                if message is None or message.body == b"this is not json":
                    return message

        assert (await eventually(poison)).body == b"this is not json"
    finally:
        await connection.close()


async def test_outcomes_arriving_together_are_written_in_one_statement(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    """The mail.sent / mail.failed events that share a transaction mark their invitations
    in one statement; a stale one (not the latest send) marks nothing and says so."""
    from services.invitations import repository as repo

    portal = world.add_portal()
    ids = []
    for n in range(3):
        response = await client.post(
            "/invitations", json={"portal_id": portal["id"], "email": f"together{n}@example.com"}
        )
        ids.append(uuid.UUID((await response.json())["invitation"]["id"]))
    mails = [
        await pool.fetchval("SELECT last_mail_id FROM invitations WHERE id = $1", i) for i in ids
    ]
    async with pool.acquire() as conn:
        marked = await repo.set_deliveries(
            conn,
            [
                (ids[0], mails[0], "sent", None),
                (ids[1], uuid.uuid4(), "failed", "an older send"),
                (ids[2], mails[2], "failed", "550 no such user"),
            ],
        )
    assert marked == [True, False, True]
    rows = {
        row["id"]: row
        for row in await pool.fetch(
            "SELECT id, delivery, delivery_error FROM invitations WHERE id = ANY($1)", ids
        )
    }
    assert (rows[ids[0]]["delivery"], rows[ids[0]]["delivery_error"]) == ("sent", None)
    assert rows[ids[1]]["delivery"] not in ("sent", "failed")
    assert (rows[ids[2]]["delivery"], rows[ids[2]]["delivery_error"]) == (
        "failed",
        "550 no such user",
    )


async def test_an_integration_past_its_hourly_cap_is_answered_and_sends_nothing(
    app_factory: Any,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    clock: Clock,
    migrated_schemas: TestEnv,
) -> None:
    """A leaked or looping integration can't send unbounded first invitations (each an
    email to a new address): past INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR in any hour,
    each request is answered invitation.rejected integration_rate_limited naming the
    sender and when the next fits; nothing is made or sent. A repeat of a key is not
    counted, and the hour after, the integration is served again."""
    # Past the hour of the requests the earlier tests of the run published.
    clock.advance(hours=2)
    app = await app_factory(invitations_requests_per_integration_hour=3)
    portal = world.add_portal()
    keys = [f"cap-{n}-{uuid.uuid4().hex}" for n in range(5)]

    def request(key: str) -> InvitationRequested:
        return InvitationRequested(
            portal_id=uuid.UUID(portal["id"]), email=f"{key}@example.com", idempotency_key=key
        )

    for key in keys[:3]:
        await publish("invitation.requested", request(key))
    await publish.settled(pool)
    await publish("invitation.requested", request(keys[0]))  # a repeat: answered, not counted
    for key in keys[3:]:
        await publish("invitation.requested", request(key))
    await publish.settled(pool)
    made = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE idempotency_key = ANY($1::text[])", keys
    )
    assert made == 3
    for key in keys[3:]:
        [(kind, answer)] = await outbox_events(pool, key)
        assert kind == "invitation.rejected"
        assert answer["data"]["reason"] == "integration_rate_limited"
        assert migrated_schemas.integration_user in answer["data"]["message"]
        assert "Nothing was sent" in answer["data"]["message"]
        retry_at = datetime.fromisoformat(answer["data"]["retry_at"])
        # Counted by the minute: the minute of the three requests leaves the hour.
        assert retry_at == clock.now.replace(second=0, microsecond=0) + timedelta(hours=1)
    clock.advance(hours=1, seconds=1)
    await publish("invitation.requested", request(keys[4]))
    await publish.settled(pool)
    kinds = [kind for kind, _ in await outbox_events(pool, keys[4])]
    assert kinds[-2:] == ["invitation.created", "mail.requested"]
    # The hourly retention task forgets what has left the window.
    sender = migrated_schemas.integration_user
    counted = "SELECT coalesce(sum(requests), 0) FROM sender_counts WHERE sender = $1"
    assert await pool.fetchval(counted, sender) == 4
    clock.advance(minutes=59)
    await clear_closed_once(app.app[DEPS])
    assert await pool.fetchval(counted, sender) == 1


async def test_a_cap_of_zero_counts_nothing_and_refuses_nothing(
    app_factory: Any,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    clock: Clock,
    migrated_schemas: TestEnv,
) -> None:
    """INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR=0 turns the cap off (an installation that
    caps its integrations elsewhere, the benchmark): every request is served and none is
    written down to be counted."""
    clock.advance(hours=2)
    await app_factory(invitations_requests_per_integration_hour=0)
    sender = migrated_schemas.integration_user
    counted = "SELECT coalesce(sum(requests), 0) FROM sender_counts WHERE sender = $1"
    before = await pool.fetchval(counted, sender)
    portal = world.add_portal()
    keys = [f"nocap-{n}-{uuid.uuid4().hex}" for n in range(4)]
    for key in keys:
        await publish(
            "invitation.requested",
            InvitationRequested(
                portal_id=uuid.UUID(portal["id"]), email=f"{key}@example.com", idempotency_key=key
            ),
        )
    await publish.settled(pool)
    made = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE idempotency_key = ANY($1::text[])", keys
    )
    assert made == 4
    assert await pool.fetchval(counted, sender) == before


async def test_a_key_reused_for_another_address_or_portal_is_refused_not_answered_created(
    client: Client, world: World, pool: asyncpg.Pool, publish: Publish
) -> None:
    """A key that already made an invitation, sent again with another address or another
    portal, is a bug (or worse) in the integration: it is answered idempotency_key_reused,
    and makes nothing; before, it was answered invitation.created naming the first
    invitation, as if the new address had been invited."""
    portal, other = world.add_portal(), world.add_portal()
    key = f"reuse-{uuid.uuid4().hex}"
    first = InvitationRequested(
        portal_id=uuid.UUID(portal["id"]), email="first-reuse@example.com", idempotency_key=key
    )
    await publish("invitation.requested", first)
    await publish.settled(pool)
    answers = [
        await publish(
            "invitation.requested",
            first.model_copy(update=change),
        )
        for change in (
            {"email": "second-reuse@example.com"},
            {"portal_id": uuid.UUID(other["id"])},
            {"portal_id": None, "portal_slug": other["slug"]},
        )
    ]
    # The same request again, the address in another case: a repeat, answered created.
    again = await publish(
        "invitation.requested", first.model_copy(update={"email": "First-Reuse@Example.com"})
    )
    await publish.settled(pool)
    by_correlation = {e["correlation_id"]: (t, e) for t, e in await outbox_events(pool, key)}
    for correlation_id in answers:
        kind, envelope = by_correlation[correlation_id]
        assert kind == "invitation.rejected", envelope["data"]
        assert envelope["data"]["reason"] == "idempotency_key_reused"
    assert by_correlation[again][0] == "invitation.created"
    rows = await pool.fetch("SELECT email FROM invitations WHERE idempotency_key = $1", key)
    assert [r["email"] for r in rows] == ["first-reuse@example.com"]
    assert not await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE email LIKE 'second-reuse@%'"
    )


async def test_a_malformed_request_is_dead_lettered_with_a_log_naming_its_sender(
    client: Client, pool: asyncpg.Pool, publish: Publish, migrated_schemas: TestEnv
) -> None:
    """A buggy integration's malformed requests go to the dead-letter queue; the log line
    must say which integration sent them (the broker-checked user_id), else the operator
    can't tell whom to call."""
    from structlog.testing import capture_logs

    def dead_lettered() -> list[dict[str, Any]]:
        return [line for line in logs if line["event"] == "event_malformed_dead_lettered"]

    with capture_logs() as logs:
        await publish("invitation.requested", raw=b"not json")
        await publish("invitation.requested", InvitationRequested(idempotency_key="after"))
        await publish.settled(pool)
        [line] = await eventually(lambda: _now(dead_lettered()))
    assert line["sender"] == migrated_schemas.integration_user
    assert line["log_level"] == "error"


async def test_a_compressed_request_is_dead_lettered_saying_so(
    client: Client, pool: asyncpg.Pool, migrated_schemas: TestEnv
) -> None:
    """A body is JSON and never decompressed: a gzip one is dead-lettered with a log line
    that names its content_encoding (it said "not valid UTF-8"). The property is not read
    otherwise: plain JSON that names gzip is applied like any request."""
    import gzip

    from structlog.testing import capture_logs

    def request() -> dict[str, Any]:
        return make_event(
            "invitation.requested",
            InvitationRequested(idempotency_key=f"gzip-{uuid.uuid4().hex}"),
            source="crm",
        ).model_dump(mode="json")

    packed, labelled = request(), request()
    connection = await aio_pika.connect(migrated_schemas.integration_url)
    with capture_logs() as logs:
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(f"{migrated_schemas.bus_prefix}.events")
            for event, body in (
                (packed, gzip.compress(orjson.dumps(packed))),
                (labelled, orjson.dumps(labelled)),
            ):
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        content_encoding="gzip",
                        message_id=event["id"],
                        user_id=migrated_schemas.integration_user,
                    ),
                    routing_key="invitation.requested",
                )
        finally:
            await connection.close()

        def dead_lettered() -> list[dict[str, Any]]:
            return [
                line
                for line in logs
                if line["event"] == "event_malformed_dead_lettered"
                and line["message_id"] == packed["id"]
            ]

        [line] = await eventually(lambda: _now(dead_lettered()))
    assert line["reason"].startswith("content_encoding 'gzip': a body is read as JSON"), line

    async def applied() -> bool:
        found = await pool.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = $1", uuid.UUID(labelled["id"])
        )
        return bool(found)

    await eventually(applied)


# Enough requests that draining them takes seconds (about 3 ms each), far more than the
# prefetch of any consumer (32).
FLOOD = 2000


async def _flood(owners: OwnersBus, count: int) -> list[uuid.UUID]:
    """``count`` invitation.requested from the integration, as a looping one sends them
    (for portals that don't exist: each is read, checked and answered rejected)."""
    tag = uuid.uuid4().hex[:8]
    envelopes = [
        make_event(
            "invitation.requested",
            InvitationRequested(
                portal_id=uuid.uuid4(),
                email=f"flood-{tag}-{n}@example.com",
                idempotency_key=f"flood-{tag}-{n}",
            ),
            source="test",
        )
        for n in range(count)
    ]
    for start in range(0, count, 200):
        await asyncio.gather(*(owners.publish_envelope(e) for e in envelopes[start : start + 200]))
    return [envelope.id for envelope in envelopes]


async def _handled(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> int:
    count = await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", ids)
    return int(count)


async def test_a_flood_of_requests_never_holds_back_the_services_own_events(
    app_factory: Any, pool: asyncpg.Pool, publish: Publish
) -> None:
    """Before: integration requests and the service's own events shared one queue, so a
    portal created (or a delivery reported) behind 3000 queued requests waited until they
    were all read: every internal event queued behind one integration's flood. Now the
    requests wait in a queue of their own, and the portal arrives at once."""
    flood = await _flood(publish.owners, FLOOD)
    portal_id = uuid.uuid4()
    await publish("portal.created", portal_changed(portal_id, 1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    # No cap: this test's flood must not use up the integration's hour for the others.
    await app_factory(invitations_requests_per_integration_hour=0)
    await eventually(
        lambda: pool.fetchval("SELECT true FROM portals WHERE portal_id = $1", portal_id),
        timeout=120,
    )
    waited = loop.time() - started
    handled = await _handled(pool, flood)
    print(f"portal.created applied {waited:.2f} s after start, {handled}/{FLOOD} requests read")
    assert handled < FLOOD // 2, (
        f"portal.created waited behind {handled} of the {FLOOD} requests queued before it"
        f" ({waited:.1f} s)"
    )
    # And the flood is still served, each request once.
    await eventually(lambda: _handled_all(pool, flood), timeout=120)
    print(f"the {FLOOD} requests drained {loop.time() - started:.2f} s after start")


async def _handled_all(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> bool:
    return await _handled(pool, ids) == len(ids)


async def _bindings(env: TestEnv, queue: str) -> set[str]:
    """The routing keys ``queue`` is bound with on the events exchange, as the broker's
    management API lists them."""
    from libs.common.broker import vhost_of
    from libs.common.provision import management_url

    url = urlsplit(env.amqp_url)
    auth = aiohttp.encode_basic_auth(
        unquote(url.username or "guest"), unquote(url.password or "guest")
    )
    vhost = quote(vhost_of(env.amqp_url), safe="")
    api = management_url(env.amqp_url)
    async with (
        aiohttp.ClientSession(headers={"Authorization": auth}) as http,
        http.get(f"{api}/api/queues/{vhost}/{quote(queue, safe='')}/bindings") as response,
    ):
        assert response.status == 200, await response.text()
        found = await response.json()
    return {b["routing_key"] for b in found if b["source"] == f"{env.bus_prefix}.events"}


async def test_an_upgrade_applies_the_requests_left_in_the_main_queue_each_once(
    app_factory: Any,
    world: World,
    pool: asyncpg.Pool,
    publish: Publish,
    migrated_schemas: TestEnv,
) -> None:
    """An installation of the release before: its main queue bound to invitation.requested
    and requests waiting there. The provisioning of this release binds the requests' queue
    while the old service still runs (a request then goes to both queues). The new service
    applies every request once, whichever queue it came through (the inbox is one), and
    removes the old binding, so new requests no longer queue with its own events."""
    from prometheus_client import REGISTRY

    def duplicates() -> float:
        labels = {"type": "invitation.requested", "outcome": "duplicate"}
        return REGISTRY.get_sample_value("clientpress_events_consumed_total", labels) or 0.0

    prefix = migrated_schemas.bus_prefix
    events, main, requests = (
        f"{prefix}.events",
        f"{prefix}.invitations",
        f"{prefix}.invitations.requests",
    )
    portal = world.add_portal()
    keys = [f"upgrade-{n}-{uuid.uuid4().hex}" for n in range(6)]

    def request(key: str) -> InvitationRequested:
        return InvitationRequested(
            portal_id=uuid.UUID(portal["id"]), email=f"{key}@example.com", idempotency_key=key
        )

    admin = await aio_pika.connect(migrated_schemas.amqp_url)
    try:
        channel = await admin.channel()
        old, new = await channel.get_queue(main), await channel.get_queue(requests)
        # Before the upgrade: requests go to the main queue only.
        await old.bind(events, "invitation.requested")
        await new.unbind(events, "invitation.requested")
        for key in keys[:3]:
            await publish("invitation.requested", request(key))
        # The new release's provisioning: the requests' queue bound too.
        await new.bind(events, "invitation.requested")
        for key in keys[3:]:
            await publish("invitation.requested", request(key))
        assert "invitation.requested" in await _bindings(migrated_schemas, main)
        before = duplicates()

        await app_factory()
        await publish.settled(pool)
        # The three that were in both queues: each applied once, and once skipped.
        await eventually(lambda: _now(duplicates() - before == 3))
    finally:
        await admin.close()
    made = await pool.fetch(
        "SELECT idempotency_key FROM invitations WHERE idempotency_key = ANY($1::text[])", keys
    )
    assert sorted(row["idempotency_key"] for row in made) == sorted(keys)
    for key in keys:
        kinds = [kind for kind, _ in await outbox_events(pool, key)]
        assert kinds.count("invitation.created") == 1, (key, kinds)
    assert "invitation.requested" not in await _bindings(migrated_schemas, main)
    assert await _bindings(migrated_schemas, requests) == {"invitation.requested"}


async def test_readiness_and_metrics_cover_the_consumer_of_the_requests_queue(
    client: Client, migrated_schemas: TestEnv
) -> None:
    """The requests' consumer is reported like the main one: cancelled by the broker (its
    queue deleted, a classic queue of that name declared in its place) it is
    ``"consumer:invitations.requests": "cancelled"`` in /readyz and 1 in
    ``clientpress_consumer_cancelled{queue}`` while the main consumer stays ok; its
    dead-letter queue's depth is in ``clientpress_dead_letters_waiting``."""
    requests = f"{migrated_schemas.bus_prefix}.invitations.requests"
    key = "consumer:invitations.requests"
    async with management_client(client.server.app) as management:

        async def checks() -> dict[str, str]:
            response = await management.get("/readyz")
            return dict((await response.json())["checks"])

        async def metrics() -> str:
            return await (await management.get("/metrics")).text()

        await eventually(lambda: _state(checks, key, "ok"))
        text = await metrics()
        assert f'clientpress_consumer_cancelled{{queue="{requests}"}} 0.0' in text
        assert f'clientpress_dead_letters_waiting{{queue="{requests}.dead"}}' in text

        admin = await aio_pika.connect(migrated_schemas.amqp_url)
        try:
            channel = await admin.channel()
            await channel.queue_delete(requests)
            await channel.declare_queue(requests, durable=True)  # classic: the service's is quorum
            await eventually(lambda: _state(checks, key, "cancelled"))
            assert (await checks())["consumer"] == "ok"
            assert f'clientpress_consumer_cancelled{{queue="{requests}"}} 1.0' in await metrics()
            await channel.queue_delete(requests)
            await eventually(lambda: _state(checks, key, "ok"))
        finally:
            await admin.close()


async def _state(checks: Callable[[], Awaitable[dict[str, str]]], key: str, state: str) -> bool:
    return (await checks()).get(key) == state


async def _now(value: T) -> T:
    return value
