"""Issue 17 for the page scripts in a real browser: a Staff member whose browser asks for
German (Accept-Language de-DE; the account has no Language of its own) imports a CSV file
with one good and one invalid row: the script's verdicts, its preview summary, its
progress and its results are German (the words block of script_words.py), numbers in the
German format."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import new_context
from tests.browser.pages import (
    CLIENT_PASSWORD,
    add_portal,
    check_accessible,
    latest_link,
    log_in_admin,
    screenshot,
)
from tests.browser.test_import_clients import csv_file, table_rows
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]


async def invite_staff(page: Page, email: str) -> None:
    """Users → Invite Staff, Role Staff, the agency's default Language."""
    await page.goto("/admin/users")
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Role", exact=True).select_option(label="Staff")
    await page.get_by_role("button", name="Send Invitation").click()
    await expect(page.get_by_role("status")).to_have_text(f"Invitation sent to {email}")


async def test_a_german_staff_member_imports_clients_in_german(
    page: Page, chromium: Browser, stack: Stack
) -> None:
    tag = uuid.uuid4().hex[:6]
    staff_email = f"greta-{tag}@agentur.example"
    good = f"anna-{tag}@kunde.example"
    await log_in_admin(page)
    editor = await add_portal(page, f"Kanzlei {tag}", "Die Pläne.")
    portal = re.search(r"/admin/portals/([0-9a-f-]{36})", editor)
    assert portal, editor
    await invite_staff(page, staff_email)
    link = await latest_link(stack.sink, staff_email)

    context = await new_context(chromium, stack, locale="de-DE")
    try:
        staff = await context.new_page()
        await staff.goto(link)
        await expect(staff.get_by_role("heading", name="Einladung annehmen")).to_be_visible()
        await staff.get_by_label("Passwort", exact=True).fill(CLIENT_PASSWORD)
        await staff.get_by_label("Passwort bestätigen", exact=True).fill(CLIENT_PASSWORD)
        await staff.get_by_role("button", name="Passwort festlegen").click()
        await expect(staff).to_have_url(re.compile(r"/admin/portals$"))

        await staff.goto(f"/admin/portals/{portal.group(1)}/import")
        await expect(staff.get_by_role("heading", name="Kunden importieren")).to_be_visible()
        await check_accessible(staff, admin=True)
        upload = staff.get_by_label("CSV-Datei", exact=True)

        # The script's own errors are German, numbers in the German format.
        error = staff.locator("#import-error")
        too_many = "email\n" + "x@kunde.example\n" * 10_001
        await upload.set_input_files(csv_file("kunden.csv", too_many))  # type: ignore[arg-type]
        await expect(error).to_have_text(
            "Die Datei hat 10.001 Zeilen; höchstens 10.000 können auf einmal importiert werden."
        )

        # As a German Excel may save it: a "sep=;" line, semicolons, the column E-Mail.
        text = f"sep=;\nE-Mail;Name\n{good};Anna\nkeine Adresse;\n"
        await upload.set_input_files(csv_file("kunden.csv", text))  # type: ignore[arg-type]
        await expect(error).to_be_hidden()
        await expect(staff.locator("#import-preview-table tbody tr")).to_have_count(2)
        verdicts = [row[3] for row in await table_rows(staff, "import-preview-table")]
        assert verdicts[0] == "Wird eingeladen"
        invalid = (
            "Ungültige E-Mail-Adresse: Geben Sie eine einzelne gültige E-Mail-Adresse ein,"
            " z. B. name@example.com."
        )
        assert verdicts[1] == invalid
        await expect(staff.locator("#import-summary")).to_have_text(
            "Zeilen: 2. Werden eingeladen: 1. Offene Einladungen, die erneut gesendet werden: 0."
            " Werden nicht eingeladen: 1."
        )
        await screenshot(staff, "import-clients-preview-de")

        await staff.get_by_role("button", name="Einladungen senden").click()
        await expect(staff.locator("#import-results-summary")).to_have_text(
            "Fertig. Eingeladen: 1, erneut gesendet: 0, nicht eingeladen: 1."
        )
        await expect(staff.locator("#import-progress-text")).to_have_text("1 von 1 gesendet")
        results = await table_rows(staff, "import-results-table")
        assert [row[2] for row in results] == ["Eingeladen", "Nicht eingeladen"]
        assert results[1][3] == invalid
        await screenshot(staff, "import-clients-results-de")
    finally:
        await context.close()
    await stack.sink.wait_for(good)
