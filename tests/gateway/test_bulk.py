"""The gateway's side of a batch (handlers/bulk.py): duplicates within the file are found
with the project's one address rule, the same comparison as the invitations service and
the database's unique index (PostgreSQL's lower(), character by character)."""

from __future__ import annotations

from typing import Any

from services.gateway.handlers import bulk


class FakeInvitations:
    """Answers every row it is sent as created, and remembers what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def invite_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.sent += [row["email"] for row in body["rows"]]
        return {
            "results": [
                {"email": row["email"], "status": "created", "invitation_id": str(n)}
                for n, row in enumerate(body["rows"])
            ]
        }


async def test_duplicates_in_the_file_follow_the_one_address_rule() -> None:
    # Python's lower() turns a final capital sigma into the final small sigma; PostgreSQL's
    # lower(), and so the unique index, into the ordinary small sigma: these are two
    # addresses, as invitations would say.
    rows = [
        bulk.Row(email="ΟΔΥΣΣΕΑΣ@example.gr"),
        bulk.Row(email="οδυσσεας@example.gr"),
        bulk.Row(email="Ann@Example.com"),
        bulk.Row(email="ann@example.com"),
    ]
    invitations = FakeInvitations()
    results = await bulk.send(
        invitations,  # type: ignore[arg-type]
        "portal",
        rows,
        request_key=None,
        invited_by="staff",
        dry_run=False,
    )
    assert [r["status"] for r in results] == ["created", "created", "created", "rejected"]
    assert results[3].get("reason") == "duplicate"
    assert results[3].get("message") == "This email is already on row 3."
    assert invitations.sent == [row.email for row in rows[:3]]
