"""Issue 17 for the page scripts: the words static/import.js and static/app.js write come
translated in the page's words (<meta id="words" name="cp-words" content='{json}'>,
services/gateway/script_words.py): German for a German browser with its {name}
placeholders kept, English otherwise; and every message the scripts ask for is one the
block carries."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway import script_words
from tests.gateway.conftest import log_in
from tests.gateway.fakes import Backend

PASSWORD = "correct horse battery"
GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
STATIC = Path(script_words.__file__).parent / "static"


async def as_staff(gw: TestClient[Any, Any], backend: Backend) -> None:
    staff = backend.add_user(f"staff-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, role="staff")
    await log_in(gw, staff, PASSWORD)


def words_of(page: str) -> dict[str, str]:
    """The page's JSON words block, parsed."""
    blocks = re.findall(r"<meta id=\"words\" name=\"cp-words\" content='(.*?)'>", page, re.S)
    assert len(blocks) == 1, page
    words = json.loads(blocks[0])
    assert isinstance(words, dict)
    return words


def placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"\{\w+\}", text))


def asked_for(script: str) -> set[str]:
    """Every message a script passes to words(...) outside its comments: one string
    literal, or several joined with +."""
    lines = (STATIC / script).read_text(encoding="utf-8").splitlines()
    source = "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    literal = r'"(?:[^"\\]|\\.)*"'
    found = set()
    for call in re.finditer(rf"\bwords\(\s*({literal}(?:\s*\+\s*{literal})*)", source):
        parts = re.findall(literal, call.group(1))
        found.add("".join(json.loads(part) for part in parts))
    return found


async def test_the_import_page_carries_its_script_words_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_staff(gw, backend)
    portal = backend.add_portal("Acme")
    response = await gw.get(f"/admin/portals/{portal['id']}/import", headers=GERMAN)
    page = await response.text()
    assert response.status == 200
    assert '<html lang="de"' in page
    # Data, not script: the Content-Security-Policy allows no inline script, and needn't.
    assert "script-src 'self';" in response.headers["Content-Security-Policy"]

    assert "höchstens 10.000 Zeilen" in page  # the page's own count, in German format too

    words = words_of(page)
    assert set(words) == set(script_words.APP) | set(script_words.IMPORT)
    assert words["Will invite"] == "Wird eingeladen"
    assert words["Will resend a pending invitation"] == "Offene Einladung wird erneut gesendet"
    assert words["Invalid email: {message}"] == "Ungültige E-Mail-Adresse: {message}"
    assert words["Done: {invited} invited, {resent} resent, {skipped} not invited."] == (
        "Fertig. Eingeladen: {invited}, erneut gesendet: {resent}, nicht eingeladen: {skipped}."
    )
    assert words["Select all"] == "Alle auswählen"
    # Every message is translated (none left in English) and keeps its placeholders.
    for english, german in words.items():
        assert german != english, english
        assert placeholders(german) == placeholders(english), (english, german)


async def test_the_english_page_carries_the_english_words_and_other_pages_only_app_words(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_staff(gw, backend)
    portal = backend.add_portal("Acme")
    page = await (await gw.get(f"/admin/portals/{portal['id']}/import")).text()
    assert "at most 10,000 rows" in page
    english = words_of(page)
    assert english == {m: m for m in (*script_words.APP, *script_words.IMPORT)}

    # Pages without import.js carry app.js's words only.
    invitations = await (await gw.get("/admin/invitations", headers=GERMAN)).text()
    assert words_of(invitations) == {
        "Type part of an email": "Teil einer E-Mail-Adresse eingeben",
        "Filter by email": "Nach E-Mail-Adresse filtern",
        "Select all": "Alle auswählen",
    }
    # A public page too (app.js is on every page).
    login = await (await gw.get("/login", headers={"Accept-Language": "fr"})).text()
    assert words_of(login)["Select all"] == "Tout sélectionner"


def test_every_message_the_scripts_ask_for_is_in_their_words() -> None:
    app, page = asked_for("app.js"), asked_for("import.js")
    assert app == set(script_words.APP)
    assert page == set(script_words.IMPORT)
