"""Erasing a user (the right to erasure) on the real schema: the account, its sessions and
reset links go, the Activity log keeps its entries without the person's email, and
identity.user.erased carries the id alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from libs.common.errors import NotFound, Unauthorized
from services.identity import handlers
from services.identity.domain import ERASED_LABEL, ActivityEntry
from services.identity.handlers import Deps
from tests.identity.helpers import STRONG, new_email, outbox_events

pytestmark = pytest.mark.integration


def _entry(**fields: object) -> ActivityEntry:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "occurred_at": datetime.now(UTC),
        "action": "invitation.sent",
        "actor_type": "user",
        "actor_id": str(uuid.uuid4()),
        "actor_name": "dana@agency.example",
        "object_type": "invitation",
        "object_id": str(uuid.uuid4()),
    }
    return ActivityEntry(**(base | fields))  # type: ignore[arg-type]


async def test_erasing_a_user_deletes_the_account_and_anonymises_the_activity_log(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    email = new_email("erase")
    user = await handlers.create_user(deps, email, STRONG, "staff")
    address = user.email
    issued = await handlers.login(deps, email, STRONG)
    await handlers.request_password_reset(deps, email)
    about_them = _entry(object_label=address.upper(), details={"invited_by": "dana"})
    by_them = _entry(actor_id=str(user.id), actor_name=address, details={"invited_by": address})
    as_user = _entry(action="user.role_changed", object_type="user", object_id=str(user.id))
    someone_else = _entry(object_label="other@example.com")
    for entry in (about_them, by_them, as_user, someone_else):
        await handlers.record_activity(deps, entry)

    # As the relay does: identity.user.created (with the address) is published, and kept
    # an hour.
    await pool.execute(
        "UPDATE outbox SET published_at = now() WHERE published_at IS NULL"
        " AND position($1 IN lower(convert_from(body, 'UTF8'))) > 0",
        address,
    )

    erased = await handlers.erase_user(deps, user.id)

    assert erased.id == user.id
    assert await pool.fetchval("SELECT count(*) FROM users WHERE id = $1", user.id) == 0
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user.id) == 0
    assert (
        await pool.fetchval("SELECT count(*) FROM password_resets WHERE user_id = $1", user.id) == 0
    )
    with pytest.raises(Unauthorized):
        await handlers.current_session(deps, issued.token)
    with pytest.raises(Unauthorized):
        await handlers.login(deps, email, STRONG)
    # The entries stay (the audit), none names the person any more.
    rows = await pool.fetch(
        "SELECT id, actor_name, object_label, details::text AS details FROM activity"
        " WHERE id = ANY($1::uuid[])",
        [e.id for e in (about_them, by_them, as_user, someone_else)],
    )
    assert len(rows) == 4
    assert not [r for r in rows if address in " ".join(map(str, r.values())).lower()]
    by_id = {r["id"]: r for r in rows}
    assert by_id[about_them.id]["object_label"] == ERASED_LABEL
    assert by_id[by_them.id]["actor_name"] == ERASED_LABEL
    assert by_id[as_user.id]["object_label"] == ERASED_LABEL
    assert by_id[someone_else.id]["object_label"] == "other@example.com"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM activity WHERE lower(actor_name || object_label || details::text)"
            " LIKE '%' || $1 || '%'",
            address,
        )
        == 0
    )

    erasures = [
        e
        for e in await outbox_events(pool, "identity.user.erased")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert [e["data"] for e in erasures] == [{"user_id": str(user.id)}]
    revoked = [
        e["data"]["reason"]
        for e in await outbox_events(pool, "identity.session.revoked")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert revoked == ["user_erased"]
    published = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        " AND position($1 IN lower(convert_from(body, 'UTF8'))) > 0",
        address,
    )
    assert published == 0
    # The address goes to the mailer alone: sealed, on the private mail exchange.
    forgets = [
        e
        for e in await outbox_events(pool, "mail.forget")
        if orjson.loads(deps.sealer.open_text(e["data"]["sealed"])) == [address]
    ]
    assert [e["exchange"] for e in forgets] == ["mail"]
    assert address not in str(forgets).lower()

    # The entry of the erasure itself, recorded from the event once the account is gone.
    erasure = _entry(action="user.erased", object_type="user", object_id=str(user.id))
    await handlers.record_activity(deps, erasure)
    label = await pool.fetchval("SELECT object_label FROM activity WHERE id = $1", erasure.id)
    assert label == ERASED_LABEL

    # Erased once: a second erasure finds no one, and the address is free for a new account.
    with pytest.raises(NotFound):
        await handlers.erase_user(deps, user.id)
    again = await handlers.create_user(deps, email, STRONG, "client")
    assert again.id != user.id


async def test_an_address_with_a_capital_final_sigma_is_erased_everywhere(
    deps: Deps, pool: asyncpg.Pool
) -> None:
    """Where the log and the published events name the person was found with the address
    lowered by Python's str.lower, which makes a word-final capital sigma U+03C2, against
    PostgreSQL's lower(), which makes it U+03C3 like every other sigma: ΝΙΚΟΣ-…@example.gr,
    erased, stayed named in the Activity log and in identity.user.created."""
    address = f"ΝΙΚΟΣ-{uuid.uuid4().hex[:8]}@example.gr"
    user = await handlers.create_user(deps, address, STRONG, "client")
    about_them = _entry(object_label=user.email, details={"invited_by": user.email})
    await handlers.record_activity(deps, about_them)
    # convert_from's text has the collation "C" (its encoding argument's, a name), under
    # which lower() changes ASCII letters alone: lowered here in the database's own.
    in_body = "position(lower($1) IN lower(convert_from(body, 'UTF8') COLLATE \"default\")) > 0"
    published = await pool.execute(
        f"UPDATE outbox SET published_at = now() WHERE published_at IS NULL AND {in_body}",
        user.email,
    )
    assert published == "UPDATE 1"  # identity.user.created

    await handlers.erase_user(deps, user.id)

    row = await pool.fetchrow(
        "SELECT object_label, details->>'invited_by' AS invited_by FROM activity WHERE id = $1",
        about_them.id,
    )
    assert (row["object_label"], row["invited_by"]) == (ERASED_LABEL, ERASED_LABEL)
    named = await pool.fetchval(
        f"SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND {in_body}", user.email
    )
    assert named == 0
