"""Issue 9, faults 5 and 6, with real envelopes published on the bus as another system (or
a relay republishing after a crash) would.

5. The same ``invitation.accepted`` delivered twice (same event id) and announced twice
   (two event ids for one invitation): one access row, one grant, one
   ``portal.access.granted``. ``portal.updated`` arriving out of order: the invitations
   replica keeps the newer revision.
6. A message that keeps failing: a ``portal.updated`` whose revision is beyond the
   replica's bigint makes the invitations handler raise on every delivery (the
   handler-failure path, retried until the quorum queue's x-delivery-limit); plus a body
   that is not JSON and an unknown event version (the malformed path, dead-lettered at
   once). Each reaches ``<prefix>.invitations.dead`` with a log line and
   ``clientpress_events_dead_lettered_total``, and the next good message is applied."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from libs.common.bus import MAX_DELIVERIES
from libs.common.events import InvitationAccepted, PortalChanged, make_event
from tests.e2e.flows import accept_from_email
from tests.faults.support import (
    Api,
    dead_letters,
    metric,
    publish,
    publish_raw_envelope,
    record,
    unique_emails,
    wait_until,
)
from tests.support.stack import Browser, Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DEAD = "clientpress_events_dead_lettered_total"


async def test_invitation_accepted_twice_grants_once(stack: Stack, api: Api) -> None:
    first = await api.create_portal("Dup first")
    second = await api.create_portal("Dup second")
    (email,) = unique_emails("dup", 1)
    await api.invite(first["id"], email)
    browser = Browser(stack.public_url)
    try:
        status, _, _ = await accept_from_email(stack, browser, email)
    finally:
        await browser.close()
    assert status == 200
    (user,) = await db_fetch(stack, "SELECT id FROM identity.users WHERE email = $1", email)
    # A pending invitation of the same person to the second portal, accepted only by the
    # events below (the saga never ran for it).
    await api.invite(second["id"], email)
    (invitation,) = await db_fetch(
        stack,
        "SELECT id FROM invitations.invitations WHERE portal_id = $1",
        uuid.UUID(second["id"]),
    )
    data = InvitationAccepted(
        invitation_id=invitation["id"],
        portal_id=uuid.UUID(second["id"]),
        email=email,
        user_id=user["id"],
        sub_client=False,
    )
    envelope = make_event("invitation.accepted", data, source="fault-test")
    for _ in range(2):  # a redelivery: the same event id
        await publish_raw_envelope(stack, envelope.to_json(), "invitation.accepted")
    await publish(stack, "invitation.accepted", data)  # announced again: a new event id

    async def three_seen() -> bool:
        rows = await db_fetch(
            stack,
            "SELECT count(*) AS n FROM portals.inbox WHERE event_type = 'invitation.accepted'"
            " AND event_id = ANY($1::uuid[])",
            [envelope.id],
        )
        grants = await db_fetch(
            stack,
            "SELECT count(*) AS n FROM portals.access WHERE portal_id = $1",
            uuid.UUID(second["id"]),
        )
        return rows[0]["n"] == 1 and grants[0]["n"] == 1

    await wait_until(three_seen, 20, "the accepted invitation applied")
    # Let the duplicates arrive and be dropped before counting effects.
    await wait_until(
        lambda: _consumed(stack, "invitation.accepted", 3), 20, "all three deliveries consumed"
    )
    access = await db_fetch(
        stack,
        "SELECT user_id, role FROM portals.access WHERE portal_id = $1",
        uuid.UUID(second["id"]),
    )
    grants = await db_fetch(
        stack,
        "SELECT count(*) AS n FROM portals.applied_grants WHERE grant_key = $1",
        str(invitation["id"]),
    )
    granted_events = await db_fetch(
        stack,
        "SELECT count(*) AS n FROM portals.outbox WHERE routing_key = 'portal.access.granted'"
        " AND convert_from(body, 'UTF8') LIKE $1",
        f"%{second['id']}%",
    )
    record(
        "event_delivered_twice",
        deliveries=3,
        access_rows=len(access),
        grants=grants[0]["n"],
        access_granted_events=granted_events[0]["n"],
    )
    assert [(r["user_id"], r["role"]) for r in access] == [(user["id"], "client")]
    assert grants[0]["n"] == 1
    assert granted_events[0]["n"] == 1


async def _consumed(stack: Stack, event_type: str, count: int) -> bool:
    total = await metric(
        stack["portals"].management_url, "clientpress_events_consumed_total", type=event_type
    )
    return total >= count


async def test_portal_updates_out_of_order_keep_the_newer(stack: Stack, api: Api) -> None:
    portal = await api.create_portal("Order")
    portal_id = uuid.UUID(portal["id"])
    revision = int((await _replica(stack, portal_id))["revision"])

    def update(title: str, rev: int) -> PortalChanged:
        return PortalChanged(
            portal_id=portal_id, slug=portal["slug"], title=title, status="active", revision=rev
        )

    await publish(stack, "portal.updated", update("Newer", revision + 2))
    await wait_until(
        lambda: _replica_title(stack, portal_id, "Newer"), 20, "the newer revision applied"
    )
    older = await publish(stack, "portal.updated", update("Older", revision + 1))
    await wait_until(lambda: _in_inbox(stack, older), 20, "the older revision consumed")
    replica = await _replica(stack, portal_id)
    record(
        "event_out_of_order",
        published=["rev+2 Newer", "rev+1 Older"],
        replica_title=replica["title"],
        replica_revision=replica["revision"] - revision,
    )
    assert (replica["title"], replica["revision"]) == ("Newer", revision + 2)


async def _replica(stack: Stack, portal_id: uuid.UUID) -> dict[str, object]:
    (row,) = await db_fetch(
        stack, "SELECT * FROM invitations.portals WHERE portal_id = $1", portal_id
    )
    return dict(row)


async def _replica_title(stack: Stack, portal_id: uuid.UUID, title: str) -> bool:
    return (await _replica(stack, portal_id))["title"] == title


async def _in_inbox(stack: Stack, event_id: str) -> bool:
    rows = await db_fetch(
        stack, "SELECT 1 FROM invitations.inbox WHERE event_id = $1", uuid.UUID(event_id)
    )
    return bool(rows)


async def test_a_message_that_keeps_failing_is_dead_lettered(stack: Stack, api: Api) -> None:
    portal = await api.create_portal("Poison")
    portal_id = uuid.UUID(portal["id"])
    url = stack["invitations"].management_url
    before = await dead_letters(stack)
    failed_before = await metric(url, DEAD, type="portal.updated", reason="handler_failed")
    malformed_before = await metric(url, DEAD, reason="malformed")
    started = time.monotonic()

    poison = PortalChanged(
        portal_id=portal_id, slug=portal["slug"], title="Poison", status="active", revision=2**63
    )
    poison_id = await publish(stack, "portal.updated", poison)
    await publish_raw_envelope(stack, b"{not json", "portal.updated")
    unknown = json.loads(make_event("portal.updated", poison, source="fault-test").to_json())
    unknown["version"] = 99
    await publish_raw_envelope(stack, json.dumps(unknown).encode(), "portal.updated")
    good = PortalChanged(
        portal_id=portal_id,
        slug=portal["slug"],
        title="After poison",
        status="active",
        revision=1000,
    )
    await publish(stack, "portal.updated", good)

    async def three_dead() -> bool:
        return (await dead_letters(stack))["invitations"] - before["invitations"] == 3

    await wait_until(three_dead, 30, "three messages in the dead-letter queue")
    dead_after = round(time.monotonic() - started, 2)
    await wait_until(
        lambda: _replica_title(stack, portal_id, "After poison"), 20, "the good message applied"
    )
    failed = await metric(url, DEAD, type="portal.updated", reason="handler_failed")
    malformed = await metric(url, DEAD, reason="malformed")
    log_lines = [
        json.loads(line)
        for line in stack["invitations"].log_path.read_text().splitlines()
        if poison_id in line and "event_handler_failed" in line
    ]
    record(
        "poison_message",
        handler_failures_logged=len(log_lines),
        delivery_limit=MAX_DELIVERIES,
        dead_lettered_handler_failed=failed - failed_before,
        dead_lettered_malformed=malformed - malformed_before,
        seconds_to_dead_letter=dead_after,
        next_message_applied=True,
    )
    assert failed - failed_before == 1
    assert malformed - malformed_before == 2
    # The first delivery and MAX_DELIVERIES redeliveries; only the last one says so.
    assert [line["outcome"] for line in log_lines] == ["retry"] * MAX_DELIVERIES + [
        "dead_lettered"
    ], log_lines
    assert (await dead_letters(stack))["portals"] == before["portals"]
