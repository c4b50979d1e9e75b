"""Issue 16 in a real browser: Import Clients from the portal editor: a CSV file with good,
duplicate and bad rows, a verdict per row, Send Invitations with its progress bar, the
result table and Download Results; files that aren't one get a clear message."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.browser.pages import (
    add_portal,
    check_accessible,
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


async def test_import_clients_from_a_csv_file(page: Page, stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    good, again, pending = (f"{who}-{tag}@wayne.example" for who in ("lucius", "alfred", "selina"))
    await log_in_admin(page)
    editor = await add_portal(page, f"Wayne Manor {tag}", "Blueprints.")
    await invite_client(page, editor, pending)

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
    ):
        await upload.set_input_files(bad)  # type: ignore[arg-type]
        await expect(error).to_contain_text(words)
    await expect(page.get_by_role("button", name="Send Invitations")).to_be_hidden()

    text = (
        "Email,Name,Personal Message\n"
        f"{good},Lucius Fox,See you at the office.\n"
        f"{again},Alfred,\n"
        "not an email,,\n"
        f"{good.upper()},Lucius again,\n"
        f"{pending},Selina,\n"
    )
    await upload.set_input_files(csv_file("clients.csv", text))  # type: ignore[arg-type]
    await expect(error).to_be_hidden()
    preview = page.locator("#import-preview-table")
    await expect(preview.locator("tbody tr")).to_have_count(5)
    verdicts = [row[3] for row in await table_rows(page, "import-preview-table")]
    assert verdicts[0] == verdicts[1] == "Will invite"
    assert verdicts[2].startswith("Invalid email: ")
    assert verdicts[3] == "Duplicate in the file: This email is already on row 1."
    assert verdicts[4] == "Will resend a pending invitation"
    await screenshot(page, "import-clients-preview")

    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 2 invited, 1 resent, 2 not invited."
    )
    progress = page.get_by_label("Progress", exact=True)
    assert await progress.get_attribute("value") == await progress.get_attribute("max") == "3"
    results = await table_rows(page, "import-results-table")
    assert [row[2] for row in results] == [
        "Invited",
        "Invited",
        "Not invited",
        "Not invited",
        "Resent",
    ]
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
    ]
    assert lines[3]["reason"] == "duplicate" and lines[0]["invitation_id"]

    [welcome] = await stack.sink.wait_for(good)
    assert "Hi Lucius Fox," in text_part(welcome)
    assert "See you at the office." in text_part(welcome)
    await stack.sink.wait_for(pending, count=2)
    await stack.sink.wait_for(again)


async def test_an_import_in_the_chosen_language(page: Page, stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    people = [f"{who}-{tag}@louvre.example" for who in ("amelie", "jules")]
    await log_in_admin(page)
    editor = await add_portal(page, f"Musée {tag}", "Les plans.")
    await page.goto(editor)
    await page.get_by_role("link", name="Import Clients").click()
    await page.get_by_label("Language", exact=True).select_option(label="Français")
    text = "email\n" + "".join(f"{email}\n" for email in people)
    await page.get_by_label("CSV File", exact=True).set_input_files(
        csv_file("clients.csv", text)  # type: ignore[arg-type]
    )
    await expect(page.locator("#import-preview-table tbody tr")).to_have_count(2)
    await page.get_by_role("button", name="Send Invitations").click()
    await expect(page.locator("#import-results-summary")).to_have_text(
        "Done: 2 invited, 0 resent, 0 not invited."
    )
    for email in people:
        [message] = await stack.sink.wait_for(email)
        assert message["Content-Language"] == "fr"
        assert "Accepter l'invitation" in text_part(message)
