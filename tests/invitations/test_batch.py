"""Issue 16, POST /invitations/batch on the real database and broker: a verdict per row in
input order, a failing row redone alone so its neighbours still go, the invitee's name in
the mail job, and two identical batches at once making each invitation and email once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.web import BUS_PARTS
from services.invitations.handlers import batch as batch_module
from tests.invitations.conftest import World, outbox_events
from tests.support.mailjobs import opened

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email(tag: str = "bulk") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


async def batch(client: Client, portal_id: str, rows: list[dict[str, Any]], **extra: Any) -> Any:
    response = await client.post(
        "/invitations/batch", json={"portal_id": portal_id, "rows": rows, **extra}
    )
    assert response.status == 200, await response.text()
    return (await response.json())["results"]


async def mail_jobs(pool: asyncpg.Pool, invitation_id: str) -> list[dict[str, Any]]:
    return [e for t, e in await outbox_events(pool, invitation_id) if t == "mail.requested"]


async def test_verdicts_in_order_and_a_failing_row_fails_alone(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    member = new_email("member")
    world.add_user(member, portal["id"])
    first, second, third = new_email(), new_email(), new_email()
    key = f"k-{uuid.uuid4().hex}"
    rows = [
        {"email": first, "name": "Ada  Lovelace", "idempotency_key": key},
        # The same key for another person: recorded second, it makes the chunk's
        # transaction fail, and the chunk is redone one row at a time.
        {"email": second, "idempotency_key": key},
        {"email": "nobody"},
        {"email": member},
        {"email": first.upper()},
        {"email": third, "personal_message": "m" * 1001},
        {"email": third, "sub_client": True},
    ]
    results = await batch(client, portal["id"], rows, invited_by="ann@agency.example")
    assert [(r["row"], r["status"], r.get("reason")) for r in results] == [
        (1, "created", None),
        (2, "rejected", "idempotency_key_reused"),
        (3, "rejected", "invalid_email"),
        (4, "rejected", "already_has_access"),
        (5, "rejected", "duplicate"),
        (6, "rejected", "personal_message_too_long"),
        (7, "created", None),
    ]
    made = [r["invitation_id"] for r in results if r["status"] == "created"]
    for invitation_id in made:
        # The failed chunk's writes are gone: one mail job each, not two.
        assert len(await mail_jobs(pool, invitation_id)) == 1
    [job] = await mail_jobs(pool, made[0])
    assert job["data"]["context"]["invitee_name"] == "Ada Lovelace"
    response = await client.get(f"/invitations/{made[1]}")
    shown = await response.json()
    assert shown["sub_client"] is True and shown["name"] is None

    # A preview of the same rows writes nothing and says what a send would do now.
    again = await batch(
        client, portal["id"], [{"email": first}, {"email": new_email()}], dry_run=True
    )
    assert [r["status"] for r in again] == ["resent", "created"]
    assert len(await mail_jobs(pool, made[0])) == 1


async def test_two_identical_batches_at_once_invite_each_person_once(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    emails = [new_email("race") for _ in range(150)]
    tag = uuid.uuid4().hex
    rows = [{"email": e, "idempotency_key": f"{tag}#{n}"} for n, e in enumerate(emails)]
    one, two = await asyncio.gather(
        batch(client, portal["id"], rows), batch(client, portal["id"], rows)
    )
    assert one == two
    assert {r["status"] for r in one} == {"created"}
    counts = await pool.fetch(
        "SELECT email_lower, count(*) AS n, max(send_count) AS sends FROM invitations"
        " WHERE portal_id = $1 GROUP BY email_lower",
        uuid.UUID(portal["id"]),
    )
    assert len(counts) == len(emails)
    assert {(row["n"], row["sends"]) for row in counts} == {(1, 1)}


async def test_a_member_whose_address_ends_in_a_capital_sigma_already_has_access(
    client: Client, world: World
) -> None:
    """The batch's look-up of existing accounts is keyed by the one address rule (as the
    rows are): Python's lower() would key this account by the final small sigma and the
    row by the ordinary one, and the member would be invited to a portal they are in."""
    portal = world.add_portal()
    member = f"ΟΔΥΣΣΕΑΣ-{uuid.uuid4().hex[:6]}@example.gr"
    world.add_user(member, portal["id"])
    results = await batch(client, portal["id"], [{"email": member}, {"email": new_email()}])
    assert [(r["status"], r.get("reason")) for r in results] == [
        ("rejected", "already_has_access"),
        ("created", None),
    ]


async def test_a_batch_is_written_before_any_of_its_events_is_published(
    client: Client, world: World, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay is held while a batch is written: the first chunk's events are not
    published while the next chunk is still to be written (without the hold they go out at
    once), and every event is published right after the answer."""
    portal = world.add_portal()
    parts = client.server.app[BUS_PARTS]
    for _ in range(100):  # the broker is reached in the background after the app starts
        if parts.relay is not None:
            break
        await asyncio.sleep(0.1)
    before = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM outbox")
    published_between: list[int] = []
    write = batch_module._write

    async def write_slowly(deps: Any, chunk: Any, days: int) -> Any:
        if published_between or await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE seq > $1", before
        ):
            # The first chunk is committed: time enough for a relay that is not held.
            await asyncio.sleep(1.0)
            published_between.append(
                await pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE seq > $1 AND published_at IS NOT NULL",
                    before,
                )
            )
        return await write(deps, chunk, days)

    monkeypatch.setattr(batch_module, "_write", write_slowly)
    rows = [{"email": new_email("held")} for _ in range(2 * batch_module.CHUNK)]
    results = await batch(client, portal["id"], rows)
    assert {r["status"] for r in results} == {"created"}
    assert published_between == [0]
    unpublished = None
    for _ in range(300):
        unpublished = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE seq > $1 AND published_at IS NULL", before
        )
        if unpublished == 0:
            break
        await asyncio.sleep(0.1)
    assert unpublished == 0
    # invitation.created for each row, and each chunk's mail jobs in one message.
    assert (
        await pool.fetchval("SELECT count(*) FROM outbox WHERE seq > $1", before)
        == len(rows) + len(rows) // batch_module.CHUNK
    )


async def test_a_chunks_mail_jobs_travel_in_one_message_each_sealed(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    before = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM outbox")
    rows = [
        {"email": new_email("jobs"), "name": f"Client {n}"} for n in range(batch_module.CHUNK + 3)
    ]
    results = await batch(client, portal["id"], rows)
    made = {r["invitation_id"]: rows[r["row"] - 1] for r in results}
    assert len(made) == len(rows)

    messages = await pool.fetch(
        "SELECT routing_key, exchange, body FROM outbox WHERE seq > $1 ORDER BY seq", before
    )
    jobs = [m for m in messages if m["routing_key"] == "mail.requested"]
    # Two chunks (500 and 3 rows): two messages, version 2, on the private mail exchange.
    assert len(jobs) == 2 and all(m["exchange"] == "mail" for m in jobs)
    bodies = [orjson.loads(m["body"]) for m in jobs]
    assert [b["version"] for b in bodies] == [2, 2]
    assert [len(b["data"]["jobs"]) for b in bodies] == [batch_module.CHUNK, 3]
    # The links are sealed in the message, one per job, each for its own invitation.
    for message in jobs:
        assert b"token=" not in message["body"]
    seen = {}
    for body in bodies:
        for job in opened(body)["data"]["jobs"]:
            seen[job["ref_id"]] = job
    assert set(seen) == set(made)
    for invitation_id, row in made.items():
        job = seen[invitation_id]
        assert job["to"] == row["email"] and job["context"]["invitee_name"] == row["name"]
    tokens = {job["context"]["accept_url"] for job in seen.values()}
    assert len(tokens) == len(made)
    created = [m for m in messages if m["routing_key"] == "invitation.created"]
    assert len(created) == len(rows)
