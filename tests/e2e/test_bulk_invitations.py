"""Issue 16 on the real stack: POST /api/v1/portals/{id}/invitations/batch, JSON and CSV,
with a verdict per row in input order, the invitee's name in the greeting, a retried
batch that sends nothing twice, and 10,000 rows each delivered exactly once."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import ADMIN_EMAIL, Stack
from tests.e2e.flows import Api, unique_email
from tests.support.smtp import html_part, text_part
from tests.support.stack import API_KEY, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def post_batch(
    stack: Stack,
    portal_id: str,
    body: Any,
    *,
    key: str | None = None,
    csv: bytes | None = None,
    csv_type: str = "text/csv",
    dry_run: bool = False,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    url = f"{stack.public_url}/api/v1/portals/{portal_id}/invitations/batch"
    if dry_run:
        url += "?dry_run=true"
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        if csv is not None:
            request = session.post(url, data=csv, headers={"Content-Type": csv_type})
        else:
            request = session.post(url, json=body)
        async with request as response:
            return response.status, await response.json()


def verdicts(results: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [(r["row"], r["status"], r.get("reason")) for r in results]


async def admin_as_client(api: Api, portal_id: str) -> None:
    code, users = await api.call("GET", "/users?q=admin")
    assert code == 200, users
    [admin] = [u for u in users["items"] if u["email"] == ADMIN_EMAIL]
    code, body = await api.call("PUT", f"/portals/{portal_id}/client", {"user_id": admin["id"]})
    assert code == 200, body


async def test_batch_verdicts_names_and_a_retry_that_sends_nothing_twice(
    stack: Stack, api: Api
) -> None:
    portal = await api.portal(f"Bulk {uuid.uuid4().hex[:6]}")
    await admin_as_client(api, portal["id"])
    fresh, pending, named = (unique_email("bulk") for _ in range(3))
    code, body = await api.invite(portal["id"], pending)
    assert code == 201, body
    await stack.sink.wait_for(pending)
    rows = [
        {"email": fresh},
        {"email": named, "name": "Ada Lovelace", "personal_message": "Welcome aboard."},
        {"email": "not an address"},
        {"email": fresh.upper()},
        {"email": pending},
        {"email": ADMIN_EMAIL},
    ]

    code, preview = await post_batch(stack, portal["id"], {"invitations": rows}, dry_run=True)
    assert code == 200, preview
    assert verdicts(preview["results"]) == [
        (1, "created", None),
        (2, "created", None),
        (3, "rejected", "invalid_email"),
        (4, "rejected", "duplicate"),
        (5, "resent", None),
        (6, "rejected", "already_has_access"),
    ]
    assert "row 1" in preview["results"][3]["message"]
    written = await db_fetch(
        stack, "SELECT 1 FROM invitations.invitations WHERE email_lower = $1", fresh.lower()
    )
    assert written == []  # a preview sends nothing

    key = f"import-{uuid.uuid4().hex}"
    code, first = await post_batch(stack, portal["id"], {"invitations": rows}, key=key)
    assert code == 200, first
    assert verdicts(first["results"]) == verdicts(preview["results"])
    assert [r["email"] for r in first["results"]] == [r["email"] for r in rows]
    assert all(r.get("invitation_id") for r in first["results"] if r["status"] != "rejected")

    [greeting] = await stack.sink.wait_for(named)
    assert "Hi Ada Lovelace," in text_part(greeting)
    assert "Hi <bdi>Ada Lovelace</bdi>," in html_part(greeting)
    assert "Welcome aboard." in text_part(greeting)
    await stack.sink.wait_for(fresh)
    await stack.sink.wait_for(pending, count=2)
    code, listed = await api.call("GET", f"/invitations?email={named}")
    assert code == 200 and listed["items"][0]["name"] == "Ada Lovelace", listed

    # The same request again: each row answers as before, and no email goes out again.
    code, again = await post_batch(stack, portal["id"], {"invitations": rows}, key=key)
    assert code == 200, again
    assert again["results"] == first["results"]
    # A later batch's email, delivered after anything the retry could have queued.
    marker = unique_email("marker")
    code, _ = await post_batch(stack, portal["id"], {"invitations": [{"email": marker}]})
    await stack.sink.wait_for(marker)
    assert (len(stack.sink.to(fresh)), len(stack.sink.to(named)), len(stack.sink.to(pending))) == (
        1,
        1,
        2,
    )

    # A row's own key names one invitation: reused for another address, it is refused.
    code, reused = await post_batch(
        stack,
        portal["id"],
        {"invitations": [{"email": unique_email("k"), "key": f"{key}#1"}]},
    )
    assert code == 200 and verdicts(reused["results"]) == [
        (1, "rejected", "idempotency_key_reused")
    ], reused


async def test_batch_from_csv(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Bulk CSV {uuid.uuid4().hex[:6]}")
    one, two = unique_email("csv"), unique_email("csv")
    text = (
        "Email,Name,Personal Message,Sub Client,First Name\r\n"
        f'{one},"Grace Hopper",,yes,Grace\r\n'
        f'{two},,"Hello,\nsee you",,\r\n'
        "nobody,,,,\r\n"
    )
    code, body = await post_batch(stack, portal["id"], None, csv=b"\xef\xbb\xbf" + text.encode())
    assert code == 200, body
    assert body["unread_columns"] == ["First Name"]  # named, not dropped without a word
    assert verdicts(body["results"]) == [
        (1, "created", None),
        (2, "created", None),
        (3, "rejected", "invalid_email"),
    ]
    code, listed = await api.call("GET", f"/invitations?email={one}")
    assert listed["items"][0]["sub_client"] is True and listed["items"][0]["name"] == "Grace Hopper"
    [message] = await stack.sink.wait_for(two)
    assert "see you" in text_part(message)

    for raw, problem in (
        (b"name\r\nx@example.com\r\n", "no_email_column"),
        ("email\r\nzoë@example.com\r\n".encode("latin-1"), "invalid_encoding"),
        (b"email\r\na@example.com\x00\r\n", "not_csv"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "invalid_encoding"),
        (b"email\n" + b"a@example.com\n" * 10_001, "too_many_rows"),
    ):
        code, error = await post_batch(stack, portal["id"], None, csv=raw)
        assert code == 422 and error["error"]["code"] == problem, (problem, error)

    # A spreadsheet saved in French or German separates its cells with semicolons (tabs
    # from some others) and may spell the column E-Mail: read as such, not "no email column".
    four, five, six, seven = (unique_email("csv") for _ in range(4))
    answers = []
    for separated in (
        f"\ufeffE-Mail;Name;Sub-Client\r\n{four};Hopper, Grace;1\r\n",
        f"email\tname\tNotes\r\n{five}\tAda\tVIP\r\n",
        f"sep=;\r\nE-Mail;Name\r\n{six};Curie, Marie\r\n",  # Excel's separator line
        f"Adresse e-mail;Nom\r\n{seven};Zoé\r\n",  # the columns headed in French
    ):
        code, body = await post_batch(stack, portal["id"], None, csv=separated.encode())
        assert code == 200 and verdicts(body["results"]) == [(1, "created", None)], body
        answers.append(body)
    assert "unread_columns" not in answers[0] and answers[1]["unread_columns"] == ["Notes"]
    code, listed = await api.call("GET", f"/invitations?email={four}")
    assert listed["items"][0]["name"] == "Hopper, Grace" and listed["items"][0]["sub_client"]
    code, listed = await api.call("GET", f"/invitations?email={five}")
    assert listed["items"][0]["name"] == "Ada"
    code, listed = await api.call("GET", f"/invitations?email={six}")
    assert listed["items"][0]["name"] == "Curie, Marie"
    code, listed = await api.call("GET", f"/invitations?email={seven}")
    assert listed["items"][0]["name"] == "Zoé"

    # A sender that declares another charset is read in it; one we don't know is refused.
    eight = unique_email("csv")
    code, body = await post_batch(
        stack,
        portal["id"],
        None,
        csv=f"email;name\r\n{eight};Zoë Œuvre\r\n".encode("windows-1252"),
        csv_type="text/csv; charset=windows-1252",
    )
    assert code == 200 and verdicts(body["results"]) == [(1, "created", None)], body
    code, listed = await api.call("GET", f"/invitations?email={eight}")
    assert listed["items"][0]["name"] == "Zoë Œuvre"
    code, error = await post_batch(
        stack, portal["id"], None, csv=b"email\r\n", csv_type="text/csv; charset=klingon"
    )
    assert code == 422 and error["error"]["code"] == "invalid_encoding", error
    assert "klingon" in error["error"]["message"]

    # CSV under the older names some senders use; another type is read as JSON, and says so.
    three = unique_email("csv")
    code, body = await post_batch(
        stack, portal["id"], None, csv=f"email\n{three}\n".encode(), csv_type="application/csv"
    )
    assert code == 200 and verdicts(body["results"]) == [(1, "created", None)], body
    assert "unread_columns" not in body
    code, error = await post_batch(
        stack, portal["id"], None, csv=f"email\n{three}\n".encode(), csv_type="text/plain"
    )
    assert code == 400 and error["error"]["code"] == "invalid_json", error
    assert "text/csv" in error["error"]["message"]


async def test_ten_thousand_rows_each_delivered_exactly_once(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Bulk 10k {uuid.uuid4().hex[:6]}")
    tag = uuid.uuid4().hex[:8]
    emails = [f"bulk-{tag}-{n}@example.com" for n in range(10_000)]
    for _ in range(3):
        # A 503 (a database or broker restart mid-batch, on a shared machine) is what a
        # client retries with the same key: rows already written answer as before and
        # send nothing twice, which the count of emails below checks.
        code, body = await post_batch(
            stack,
            portal["id"],
            {"invitations": [{"email": e} for e in emails]},
            key=f"ten-thousand-{tag}",
        )
        if code != 503:
            break
    assert code == 200, body
    assert [r["email"] for r in body["results"]] == emails
    assert Counter(r["status"] for r in body["results"]) == {"created": 10_000}

    counts = await stack.sink.wait_for_each(emails, timeout=900)
    assert len(counts) == len(emails), f"{len(emails) - len(counts)} addresses got no email"
    assert max(counts.values()) == 1, [a for a, n in counts.items() if n > 1][:5]


async def test_an_oversized_or_repeated_row_never_fails_its_neighbours(
    stack: Stack, api: Api
) -> None:
    """A row with a name or message far over the limits, or a key an earlier row of the
    same batch holds, is rejected alone, in the preview as in the send; rows whose
    messages fill a piece of the batch go in smaller pieces, not as one refused call."""
    portal = await api.portal(f"Bulk limits {uuid.uuid4().hex[:6]}")
    fine, long_name, long_mail = (unique_email("lim") for _ in range(3))
    keyed, rekeyed = unique_email("lim"), unique_email("lim")
    key = f"row-{uuid.uuid4().hex}"
    rows = [
        {"email": fine},
        {"email": long_name, "name": "N" * 5_000},
        {"email": long_mail, "personal_message": "m" * 80_000},
        {"email": "x" * 3_000 + "@example.com"},
        {"email": keyed, "key": key},
        {"email": rekeyed, "key": key},
    ]
    expected = [
        (1, "created", None),
        (2, "rejected", "name_too_long"),
        (3, "rejected", "personal_message_too_long"),
        (4, "rejected", "invalid_email"),
        (5, "created", None),
        (6, "rejected", "idempotency_key_reused"),
    ]
    code, preview = await post_batch(stack, portal["id"], {"invitations": rows}, dry_run=True)
    assert code == 200 and verdicts(preview["results"]) == expected, preview
    assert "row 5" in preview["results"][5]["message"]
    code, sent = await post_batch(stack, portal["id"], {"invitations": rows})
    assert code == 200 and verdicts(sent["results"]) == expected, sent
    assert "80,000" in sent["results"][2]["message"]

    # The same in a CSV file: no cell is too long to be answered on its row, past the
    # csv module's default limit too (131,072 characters: 422 not_csv, "line 3 has a
    # quote inside a value").
    csv_rows = [
        "email,name,personal_message",
        f"{unique_email('lim')},{'N' * 70_000},",
        f"{unique_email('lim')},,{'m' * 200_000}",
        f"{unique_email('lim')},Ada,Hello",
    ]
    code, body = await post_batch(
        stack, portal["id"], None, csv="\r\n".join(csv_rows).encode(), dry_run=True
    )
    assert code == 200, body
    assert verdicts(body["results"]) == [
        (1, "rejected", "name_too_long"),
        (2, "rejected", "personal_message_too_long"),
        (3, "created", None),
    ]

    # 1,200 rows of 9,000-character messages (11 MB, under the 16 MiB a body may be):
    # each row is rejected for its message, none for its neighbours' size.
    many = "email,personal_message\r\n" + "".join(
        f"{unique_email('big')},{'m' * 9_000}\r\n" for _ in range(1_200)
    )
    code, body = await post_batch(stack, portal["id"], None, csv=many.encode(), dry_run=True)
    assert code == 200, body
    assert Counter(r["reason"] for r in body["results"]) == {"personal_message_too_long": 1_200}


async def test_json_and_csv_are_refused_and_answered_alike(stack: Stack, api: Api) -> None:
    """Over the row limit, JSON is refused as a CSV file is (too_many_rows, in words); a
    contact without an address (null) is rejected on its row, as an empty email cell is;
    a CSV file with a quote left open says on which line."""
    portal = await api.portal(f"Bulk alike {uuid.uuid4().hex[:6]}")
    rows = [{"email": f"many{n}@example.com"} for n in range(10_001)]
    code, error = await post_batch(stack, portal["id"], {"invitations": rows}, dry_run=True)
    assert code == 422 and error["error"]["code"] == "too_many_rows", error
    assert error["error"]["message"] == "At most 10,000 invitations at once; this has 10,001."

    one, two = unique_email("null"), unique_email("null")
    body = {"invitations": [{"email": one}, {"email": None, "name": "No Address"}, {"email": two}]}
    code, sent = await post_batch(stack, portal["id"], body)
    assert code == 200, sent
    assert verdicts(sent["results"]) == [
        (1, "created", None),
        (2, "rejected", "invalid_email"),
        (3, "created", None),
    ]
    assert sent["results"][1]["email"] == ""

    for text, words in (
        (f'email,name\r\n{one},Ann\r\n{two},"Bob\r\n', "a quoted value on line 3 never ends"),
        (f'email,name\r\n{one},"Ann"s\r\n{two},Bob\r\n', "line 2 has a quote inside a value"),
    ):
        code, error = await post_batch(stack, portal["id"], None, csv=text.encode())
        assert code == 422 and error["error"]["code"] == "not_csv", error
        assert error["error"]["message"] == f"The file is not a CSV file: {words}.", error
