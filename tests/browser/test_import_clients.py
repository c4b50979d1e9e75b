"""Issue 16 in a real browser: Import Clients from the portal editor: a CSV file with good,
duplicate and bad rows, a pending invitee and a client who already has access, a verdict
per row, Send Invitations with its progress bar, the
result table and Download Results; files that aren't one get a clear message."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
    client_of,
    invite_client,
    log_in_admin,
    screenshot,
)
from tests.support.smtp import text_part
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


def csv_file(name: str, text: str, encoding: str = "utf-8-sig") -> dict[str, object]:
    return {"name": name, "mimeType": "text/csv", "buffer": text.encode(encoding)}


async def table_rows(page: Page, table_id: str) -> list[list[str]]:
    rows = page.locator(f"#{table_id} tbody tr")
    return [
        [cell.strip() for cell in await rows.nth(i).locator("td").all_inner_texts()]
        for i in range(await rows.count())
    ]


async def test_import_clients_from_a_csv_file(page: Page, stack: Stack, chromium: Browser) -> None:
    tag = uuid.uuid4().hex[:6]
    good, again, pending, member = (
        f"{who}-{tag}@wayne.example" for who in ("lucius", "alfred", "selina", "bruce")
    )
    await log_in_admin(page)
    editor = await add_portal(page, f"Wayne Manor {tag}", "Blueprints.")
    await invite_client(page, editor, pending)
    async with client_of(chromium, stack, page, editor, member):
        pass  # Bruce accepted: he has access to the portal
    await page.goto(editor)

    await page.get_by_role("link", name="Import Clients").click()
    await expect(page.get_by_role("heading", name="Import Clients")).to_be_visible()
    await check_accessible(page, admin=True)
    upload = page.get_by_label("CSV File", exact=True)
    error = page.locator("#import-error")

    for bad, words in (
        ({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}, "not a CSV file"),
        (csv_file("people.csv", "name\nBruce\n"), "no email column"),
        (csv_file("people.csv", "email\nzoë@wayne.example\n", "latin-1"), "not UTF-8"),
        (csv_file("people.csv", "email\n" + "x@wayne.example\n" * 10_001), "at most 10,000"),
        # A quote gone wrong names its line, as the batch API does.
        (csv_file("people.csv", 'email,name\nb@wayne.example,"Bruce\n'), "on line 2 never ends"),
        (csv_file("people.csv", 'email,name\nb@wayne.example,"Bruce" W\n'), "line 2 has a quote"),
    ):
        await upload.set_input_files(bad)  # type: ignore[arg-type]
        await expect(error).to_contain_text(words)
    await expect(page.get_by_role("button", name="Send Invitations")).to_be_hidden()
    await check_accessible(page, admin=True)

    text = (
        "Email,Name,Personal Message,Company\n"
        f'{good},Lucius Fox,See you at the "office".,Wayne Enterprises\n'
        f"{again},Alfred,,\n"
        "not an email,,,\n"
        f"{good.upper()},Lucius again,,\n"
        f"{pending},Selina,,\n"
        f"{member.upper()},Bruce,,\n"
    )
    await upload.set_input_files(csv_file("clients.csv", text))  # type: ignore[arg-type]
    await expect(error).to_be_hidden()
    preview = page.locator("#import-preview-table")
    await expect(preview.locator("tbody tr")).to_have_count(6)
    verdicts = [row[3] for row in await table_rows(page, "import-preview-table")]
    assert verdicts[0] == verdicts[1] == "Will invite"
    assert verdicts[2].startswith("Invalid email: ")
    assert verdicts[3] == "Duplicate in the file: This email is already on row 1."
    assert verdicts[4] == "Will resend a pending invitation"
    assert verdicts[5] == "Already has access"
    # A column it doesn't read is named, not dropped without a word.
    await expect(page.locator("#import-summary")).to_contain_text(
        "Columns not read: Company. Only email, name, personal_message and sub_client are read."
    )
    # The focus follows what the person waits for: the preview's summary (read out, the next
    # Tab is Send Invitations), then, as the button goes off while sending, the results.
    await expect(page.locator("#import-summary")).to_be_focused()
    await check_accessible(page, admin=True)
    await screenshot(page, "import-clients-preview")

    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 2 invited, 1 resent, 3 not invited."
    )
    await expect(page.locator("#import-results-summary")).to_be_focused()
    progress = page.get_by_label("Progress", exact=True)
    assert await progress.get_attribute("value") == await progress.get_attribute("max") == "3"
    results = await table_rows(page, "import-results-table")
    assert [row[2] for row in results] == [
        "Invited",
        "Invited",
        "Not invited",
        "Not invited",
        "Resent",
        "Not invited",
    ]
    await check_accessible(page, admin=True)
    await screenshot(page, "import-clients-results")

    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download Results").click()
    path = await (await info.value).path()
    content = Path(str(path)).read_text(encoding="utf-8-sig")
    lines = list(csv.DictReader(io.StringIO(content)))
    assert [(r["row"], r["email"], r["status"]) for r in lines] == [
        ("1", good, "created"),
        ("2", again, "created"),
        ("3", "not an email", "rejected"),
        ("4", good.upper(), "rejected"),
        ("5", pending, "resent"),
        ("6", member.upper(), "rejected"),
    ]
    assert lines[3]["reason"] == "duplicate" and lines[0]["invitation_id"]
    assert lines[5]["reason"] == "already_has_access"

    [welcome] = await stack.sink.wait_for(good)
    assert "Hi Lucius Fox," in text_part(welcome)
    assert 'See you at the "office".' in text_part(welcome)
    await stack.sink.wait_for(pending, count=2)
    await stack.sink.wait_for(again)
    # Bruce's one email is the invitation he accepted before the import.
    assert len(await stack.sink.wait_for(member)) == 1


async def test_an_import_in_the_chosen_language(page: Page, stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    people = [f"{who}-{tag}@louvre.example" for who in ("amelie", "jules")]
    await log_in_admin(page)
    editor = await add_portal(page, f"Musée {tag}", "Les plans.")
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    await page.get_by_label("Language", exact=True).select_option(label="Français")
    # As a French spreadsheet saves it: cells separated by semicolons, the columns headed
    # in French.
    text = "Adresse e-mail;Nom\r\n" + "".join(
        f"{email};Dupont, {email[:5]}\r\n" for email in people
    )
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("clients.csv", text)  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(2)
    await expect(page.locator("#import-preview-table")).to_contain_text("Dupont, ameli")
    await expect(page.locator("#import-summary")).not_to_contain_text("name")
    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 2 invited, 0 resent, 0 not invited."
    )
    # The results come back separated as the file was, so the same spreadsheet opens them.
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download Results").click()
    path = await (await info.value).path()
    content = Path(str(path)).read_text(encoding="utf-8-sig")
    results = list(csv.DictReader(io.StringIO(content), delimiter=";"))
    assert [(r["email"], r["name"], r["status"]) for r in results] == [
        (email, f"Dupont, {email[:5]}", "created") for email in people
    ]
    for email in people:
        [message] = await stack.sink.wait_for(email)
        assert message["Content-Language"] == "fr"
        assert "Accepter l'invitation" in text_part(message)


async def test_a_cell_of_any_length_is_a_verdict_on_its_row(page: Page, stack: Stack) -> None:
    """As the batch API reads a CSV body (tests/gateway/test_bulk.py): a cell past the
    131,072 characters Python's csv module reads by default is answered on its row, and
    one in a column nothing reads is left alone; the file is not refused."""
    tag = uuid.uuid4().hex[:6]
    long, fine = (f"{who}-{tag}@gotham.example" for who in ("long", "fine"))
    await log_in_admin(page)
    editor = await add_portal(page, f"Gotham {tag}", "Plans.")
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    text = (
        "email,personal_message,notes\r\n"
        f"{long},{'m' * 200_000},\r\n"
        f'{fine},Hello,"{"n" * 200_000}"\r\n'
    )
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("clients.csv", text)  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(2)
    await expect(page.locator("#import-error")).to_be_hidden()
    verdicts = [row[3] for row in await table_rows(page, "import-preview-table")]
    assert verdicts == [
        "Will not invite: The Personal Message is far too long (200,000 characters).",
        "Will invite",
    ]


async def test_a_send_stopped_by_the_network_goes_on_without_sending_twice(
    page: Page, stack: Stack
) -> None:
    """The network fails while the second piece is on its way, after the server took it:
    the page says what was not sent and how to go on, asks before it is left while
    sending, and Send Invitations sends the rest with the same keys, so no one is emailed
    twice (before: the page said to import the file again, which resends every row
    already sent as a pending invitation)."""
    tag = uuid.uuid4().hex[:6]
    people = [f"guest-{n}-{tag}@arkham.example" for n in range(600)]  # two pieces of 500
    await log_in_admin(page)
    editor = await add_portal(page, f"Arkham Import {tag}", "Rooms.")
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("guests.csv", "email\n" + "\n".join(people) + "\n")  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(600)

    sends: list[int] = []
    inside, release = asyncio.Event(), asyncio.Event()

    async def flaky(route: Route) -> None:
        if "dry_run" in route.request.url:
            await route.continue_()
            return
        body = route.request.post_data_json
        assert body is not None
        sends.append(len(body["invitations"]))
        if len(sends) == 1:
            await route.continue_()
            return
        if len(sends) == 2:
            await route.fetch()  # the server takes the piece; its answer never arrives
            inside.set()
            await release.wait()
        await route.abort("connectionreset")

    await page.route("**/invitations/batch*", flaky)
    await page.get_by_role("button", name="Send Invitations").click()
    await asyncio.wait_for(inside.wait(), 60)
    leave = """() => {
      const event = new Event("beforeunload", {cancelable: true});
      window.dispatchEvent(event);
      return event.defaultPrevented;
    }"""
    assert await page.evaluate(leave) is True  # leaving now would strand the rest
    release.set()
    await expect(page.locator("#import-error")).to_have_text(
        "Not sent: The server could not be reached. Select Send Invitations again to send the"
        " rest; rows already sent are not sent twice.",
        timeout=30_000,
    )
    await expect(page.locator("#import-error")).to_be_focused()
    assert sends == [500, 100, 100, 100]  # three tries of the second piece
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 500 invited, 0 resent, 100 not invited."
    )
    assert await page.evaluate(leave) is False

    await page.unroute("**/invitations/batch*")
    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 600 invited, 0 resent, 0 not invited.", timeout=60_000
    )
    await expect(page.locator("#import-error")).to_be_hidden()
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download Results").click()
    path = await (await info.value).path()
    results = list(csv.DictReader(io.StringIO(Path(str(path)).read_text(encoding="utf-8-sig"))))
    assert [r["status"] for r in results] == ["created"] * 600
    assert [r["email"] for r in results] == people

    counts = await stack.sink.wait_for_each(people, timeout=300)
    assert len(counts) == 600
    await asyncio.sleep(2)  # a second email would follow the first at once
    assert max(len(stack.sink.to(email)) for email in people) == 1


async def test_ten_thousand_rows_from_a_spreadsheet(page: Page, stack: Stack) -> None:
    """A file at the row limit, as a spreadsheet saves it (BOM, CRLF, quoted cells): every
    row previewed, the progress bar moving piece by piece, every row in the result CSV,
    and every invited address emailed exactly once."""
    tag = uuid.uuid4().hex[:6]
    people = [f"client-{n}-{tag}@gotham.example" for n in range(9_994)]
    pending = people[7_000]
    await log_in_admin(page)
    editor = await add_portal(page, f"Gotham Import {tag}", "Everyone.")
    await invite_client(page, editor, pending)
    lines = ["Email,Name,Sub Client"]
    lines += [f'{email},"Client {n}, Gotham",no' for n, email in enumerate(people)]
    # Three invalid rows and three repeats, spread through the file.
    for at, bad in ((10, "not an email"), (5_000, "two@@gotham.example"), (9_990, "a b@c.example")):
        lines.insert(at, f"{bad},,")
    for at, again in ((20, people[0]), (6_000, people[4_000].upper()), (10_000, people[-1])):
        lines.insert(at, f"{again},,")
    assert len(lines) == 10_001
    emails = [line.split(",")[0] for line in lines[1:]]
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("clients.csv", "\r\n".join(lines) + "\r\n")  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-summary")).to_have_text(
        "10,000 rows: 9,993 will be invited, 1 pending invitations will be resent, "
        "6 will not be invited.",
        timeout=60_000,
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(10_000)
    verdicts = await page.locator(
        "#import-preview-table tbody tr td:nth-child(4)"
    ).all_inner_texts()
    assert (
        verdicts[9] == "Invalid email: Enter a single valid email address, like name@example.com."
    )
    assert verdicts[19] == "Duplicate in the file: This email is already on row 1."
    assert verdicts.count("Will invite") == 9_993
    assert verdicts.index("Will resend a pending invitation") == emails.index(pending)
    assert (
        verdicts[-1]
        == f"Duplicate in the file: This email is already on row {emails.index(people[-1]) + 1}."
    )

    # Every text the progress line shows, recorded as it changes.
    await page.evaluate(
        """() => {
          window.progressSeen = [];
          const line = document.getElementById("import-progress-text");
          new MutationObserver(() => window.progressSeen.push(line.textContent))
            .observe(line, {childList: true, characterData: true, subtree: true});
        }"""
    )
    await page.get_by_role("button", name="Send Invitations").click()
    # Waited for in the page: Playwright's own polling of a page this big holds its main
    # thread about 2 s a time, which would slow the sending it watches tenfold.
    await page.wait_for_function(
        "() => document.getElementById('import-results-summary').textContent !== ''",
        polling=250,
        timeout=300_000,
    )
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 9,993 invited, 1 resent, 6 not invited."
    )
    seen = await page.evaluate("window.progressSeen")
    done = [int(text.split(" of ")[0].replace(",", "")) for text in seen]
    assert done == sorted(done) and done[-1] == 9_994 and len(set(done)) > 10, seen
    progress = page.get_by_label("Progress", exact=True)
    assert await progress.get_attribute("value") == await progress.get_attribute("max") == "9994"
    await expect(page.locator("#import-results-table tbody tr")).to_have_count(10_000)

    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download Results").click()
    path = await (await info.value).path()
    results = list(csv.DictReader(io.StringIO(Path(str(path)).read_text(encoding="utf-8-sig"))))
    assert [int(r["row"]) for r in results] == list(range(1, 10_001))
    assert [r["email"] for r in results] == emails
    statuses = [r["status"] for r in results]
    assert statuses.count("created") == 9_993 and statuses.count("resent") == 1
    assert {r["reason"] for r in results if r["status"] == "rejected"} == {
        "invalid_email",
        "duplicate",
    }
    assert results[1]["name"] == "Client 1, Gotham"
    assert all(r["invitation_id"] for r in results if r["status"] != "rejected")

    counts = await stack.sink.wait_for_each(people, timeout=900)
    assert len(counts) == len(people), f"{len(people) - len(counts)} addresses got no email"
    assert counts[pending] == 2 and max(counts.values()) == 2
    assert sum(counts.values()) == len(people) + 1


async def test_download_results_hands_a_spreadsheet_no_formula(page: Page, stack: Stack) -> None:
    # A cell that starts with = + - @ (or a tab or carriage return) runs as a formula when
    # the results are opened in a spreadsheet (CSV injection: =HYPERLINK, =cmd|…): each
    # such cell is written with a leading apostrophe, which shows the text as it is.
    tag = uuid.uuid4().hex[:6]
    people = {
        f"=1+2-{tag}@wayne.example": '=HYPERLINK("https://evil.example","Open")',
        f"+a-{tag}@wayne.example": "+1+1",
        f"-b-{tag}@wayne.example": "-2+3",
        f"c-{tag}@wayne.example": "@SUM(1+1)",
        f"d-{tag}@wayne.example": "Plain = name",
    }
    await log_in_admin(page)
    editor = await add_portal(page, f"Formulas {tag}", "Cells.")
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    text = "email,name\r\n" + "".join(
        f'{email},"{name.replace(chr(34), chr(34) * 2)}"\r\n' for email, name in people.items()
    )
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("formulas.csv", text)  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(len(people))
    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_contain_text("Done:")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download Results").click()
    path = await (await info.value).path()
    content = Path(str(path)).read_text(encoding="utf-8-sig")
    lines = list(csv.DictReader(io.StringIO(content)))
    assert [(r["email"], r["name"]) for r in lines] == [
        (
            ("'" + email) if email[0] in "=+-@" else email,
            ("'" + name) if name[0] in "=+-@" else name,
        )
        for email, name in people.items()
    ]
    for row in lines:
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())
