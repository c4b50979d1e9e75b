"""The gateway's side of a batch (handlers/bulk.py): duplicates within the file are found
with the project's one address rule, the same comparison as the invitations service and
the database's unique index (PostgreSQL's lower(), character by character)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from libs.common.errors import InvalidInput, NotFound
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


async def send(invitations: FakeInvitations, rows: list[bulk.Row]) -> list[Any]:
    """A staff member's batch of ``rows`` to one portal, no key, as the API sends it."""
    results: list[Any] = await bulk.send(
        invitations,  # type: ignore[arg-type]
        "portal",
        rows,
        request_key=None,
        invited_by="staff",
        dry_run=False,
    )
    return results


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
    results = await send(invitations, rows)
    assert [r["status"] for r in results] == ["created", "created", "created", "rejected"]
    assert results[3].get("reason") == "duplicate"
    assert results[3].get("message") == "This email is already on row 3."
    assert invitations.sent == [row.email for row in rows[:3]]


class PieceLog(FakeInvitations):
    """Records when each piece arrives (how many rows the gateway had checked by then)
    and refuses the pieces from ``refuse_from`` on, as invitations does a portal that
    was deleted meanwhile."""

    def __init__(self, checked: list[str], refuse_from: int | None = None) -> None:
        super().__init__()
        self.checked = checked
        self.refuse_from = refuse_from
        self.arrived: list[int] = []

    async def invite_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.arrived.append(len(self.checked))
        if self.refuse_from is not None and len(self.arrived) > self.refuse_from:
            raise NotFound("There is no such portal.", code="portal_not_found")
        await asyncio.sleep(0.01)
        return await super().invite_batch(body)


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses the gateway has checked so far, in order."""
    seen: list[str] = []
    check = bulk.email_or_none

    def counting(raw: str) -> str | None:
        seen.append(raw)
        return check(raw)

    monkeypatch.setattr(bulk, "email_or_none", counting)
    return seen


def rows(count: int) -> list[bulk.Row]:
    return [bulk.Row(email=f"row-{n}@example.com") for n in range(count)]


async def test_a_piece_is_sent_while_the_next_is_checked(checked: list[str]) -> None:
    invitations = PieceLog(checked)
    batch = rows(3 * bulk.PIECE)
    results = await send(invitations, batch)
    assert {r["status"] for r in results} == {"created"}
    assert invitations.sent == [row.email for row in batch]
    # The first piece went out before the rows after it had all been checked.
    assert invitations.arrived[0] < len(batch)


async def test_a_refused_piece_stops_the_batch_and_the_rest_is_not_sent(
    checked: list[str],
) -> None:
    invitations = PieceLog(checked, refuse_from=0)
    batch = rows(6 * bulk.PIECE)
    with pytest.raises(NotFound):
        await send(invitations, batch)
    assert invitations.sent == []
    assert len(invitations.arrived) <= bulk.PIECES_AT_ONCE
    assert len(checked) < len(batch)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('email,name\r\na@example.com,"Ann\r\n', "a quoted value on line 2 never ends"),
        ('email,name\r\na@example.com,"Ann\r\nLee\r\n', "a quoted value on line 2 never ends"),
        ('email,name\r\na@example.com,"Ann\r\nLee"\r\nb@example.com,"Bob', "on line 4 never"),
        ('email,name\r\na@example.com,"Ann" Lee\r\n', "line 2 has a quote inside a value"),
        # Excel's separator line is a line of the file too.
        ('sep=;\r\nemail;name\r\na@example.com;"Ann\r\n', "a quoted value on line 3 never ends"),
    ],
)
def test_a_quote_gone_wrong_is_refused_with_its_line(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        bulk.parse_csv(text.encode())
    assert refused.value.code == "not_csv" and words in refused.value.message


def test_a_quote_inside_an_unquoted_value_is_itself() -> None:
    rows, _ = bulk.parse_csv(b'email,personal_message\r\na@example.com,Our "VIP" portal\r\n')
    assert rows == [bulk.Row(email="a@example.com", personal_message='Our "VIP" portal')]


# Past the csv module's default limit on a cell (131,072 characters), which refused the
# file as "line 2 has a quote inside a value" (a value cell), or answered 500 (a header).
LONGER_THAN_CSV_READS = 200_000


@pytest.mark.parametrize("quoted", [False, True])
async def test_a_cell_of_any_length_is_a_verdict_on_its_row(quoted: bool) -> None:
    """The README's promise: a cell of any length is answered on its row, never a 422 for
    the file (the Import Clients page reads such a file, static/import.js, and sends it
    as JSON, whose rows are answered so too)."""
    long = "m" * LONGER_THAN_CSV_READS
    cell = f'"{long}"' if quoted else long
    text = (
        "email,name,personal_message,notes\r\n"
        f"a@example.com,{cell},,\r\n"
        f"b@example.com,,{cell},\r\n"
        f"{cell},,,\r\n"
        f"c@example.com,Cy,,{cell}\r\n"
    )
    parsed, unread = bulk.parse_csv(text.encode())
    assert unread == ["notes"]
    assert [len(row.email) for row in parsed] == [13, 13, LONGER_THAN_CSV_READS, 13]
    results = await send(FakeInvitations(), parsed)
    assert [(r["status"], r.get("reason")) for r in results] == [
        ("rejected", "name_too_long"),
        ("rejected", "personal_message_too_long"),
        ("rejected", "invalid_email"),
        ("created", None),  # its long cell is in a column nothing reads
    ]
    assert results[1]["message"] == "The Personal Message is far too long (200,000 characters)."


def test_a_header_cell_of_any_length_is_read_as_a_column_name() -> None:
    header = "email;" + "x" * LONGER_THAN_CSV_READS
    parsed, unread = bulk.parse_csv(f"{header}\r\na@example.com;Ann\r\n".encode())
    assert parsed == [bulk.Row(email="a@example.com")]
    assert unread == ["x" * LONGER_THAN_CSV_READS]
