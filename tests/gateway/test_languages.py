"""Pages in the reader's language (issue 17): Accept-Language, the account's own choice,
the invitation's language on its link's pages, /account, and the API's locale."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway import i18n
from tests.gateway.conftest import csrf, log_in, post_form
from tests.gateway.fakes import Backend

PASSWORD = "correct horse battery staple"


def lang_of(page: str) -> str:
    match = re.search(r'<html lang="([^"]+)">', page)
    assert match, page[:200]
    return match.group(1)


async def test_accept_language_chooses_the_page_language(gw: TestClient[Any, Any]) -> None:
    german = await gw.get("/login", headers={"Accept-Language": "de-AT,de;q=0.9,en;q=0.5"})
    page = await german.text()
    assert lang_of(page) == "de"
    assert german.headers["Content-Language"] == "de"
    # (and Accept-Encoding: the page is gzipped for a client that takes it)
    assert german.headers["Vary"] == "Accept-Language, Cookie, Accept-Encoding"
    assert "<h1>Anmelden</h1>" in page and "Passwort vergessen?" in page

    french = await (await gw.get("/login", headers={"Accept-Language": "fr"})).text()
    assert lang_of(french) == "fr" and "<h1>Se connecter</h1>" in french
    spanish = await (await gw.get("/login", headers={"Accept-Language": "es-MX"})).text()
    assert lang_of(spanish) == "es" and "<h1>Iniciar sesión</h1>" in spanish

    # A language we don't ship, or none: English, exactly as before.
    for header in ({"Accept-Language": "ja,zh;q=0.8"}, {}):
        english = await gw.get("/login", headers=header)
        text = await english.text()
        assert lang_of(text) == "en" and "<h1>Log In</h1>" in text
        assert english.headers["Content-Language"] == "en"


async def test_the_account_language_wins_over_the_browser(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    user = backend.add_user("ana-lang@example.com", PASSWORD, locale="es")
    await log_in(gw, user, PASSWORD)
    page = await (await gw.get("/client-portal/", headers={"Accept-Language": "de"})).text()
    assert lang_of(page) == "es"
    assert "<h1>Sus portales</h1>" in page and ">Cerrar sesión</button>" in page
    assert 'href="/account"' in page and ">Cuenta</a>" in page


async def test_api_keys_show_their_times_in_the_reader_zone_and_language(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    """Every screen shows times in the reader's Time Zone; API Keys said UTC to everyone."""
    admin = backend.add_user(
        "ada-keys@example.com", PASSWORD, role="administrator", time_zone="Australia/Sydney"
    )
    _, key = backend.add_api_key("CRM", ["invitations:write"])
    key["created_at"] = "2026-12-03T23:00:00+00:00"
    key["last_used_at"] = "2026-12-04T01:15:00+00:00"
    await log_in(gw, admin, PASSWORD)
    page = await (await gw.get("/admin/settings/api-keys")).text()
    assert '<time datetime="2026-12-03T23:00:00+00:00">2026-12-04 10:00 AEDT</time>' in page
    assert '<time datetime="2026-12-04T01:15:00+00:00">2026-12-04 12:15 AEDT</time>' in page
    backend.users[admin["id"]]["locale"] = "de"
    page = await (await gw.get("/admin/settings/api-keys")).text()
    assert ">04.12.2026, 10:00:00 AEDT</time>" in page


async def test_account_saves_language_and_time_zone(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    user = backend.add_user("carl-lang@example.com", PASSWORD)
    await log_in(gw, user, PASSWORD)
    form = await (await gw.get("/account")).text()
    assert '<label for="locale">Language</label>' in form
    assert '<label for="time_zone">Time Zone</label>' in form
    assert '<option value="de" lang="de">Deutsch</option>' in form
    assert '<option value="fr" lang="fr">Français</option>' in form
    assert '<option value="Europe/Berlin">' in form

    saved = await post_form(gw, "/account", {"locale": "de", "time_zone": "Europe/Berlin"})
    assert saved.status == 303 and saved.headers["Location"] == "/account"
    assert "identity.preferences" in backend.calls
    assert user["locale"] == "de" and user["time_zone"] == "Europe/Berlin"
    # The very next page is German: this replica forgot the cached session.
    after = await gw.get("/account")
    page = await after.text()
    assert lang_of(page) == "de" and after.headers["Content-Language"] == "de"
    assert "Ihre Sprache und Zeitzone sind gespeichert." in page
    assert '<label for="locale">Sprache</label>' in page
    assert '<option value="de" lang="de" selected>Deutsch</option>' in page

    # Back to the browser's language and the agency's zone.
    cleared = await post_form(gw, "/account", {"locale": "", "time_zone": ""})
    assert cleared.status == 303
    assert user["locale"] is None and user["time_zone"] is None


async def test_account_refuses_an_unknown_language_or_zone(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    user = backend.add_user("dora-lang@example.com", PASSWORD)
    await log_in(gw, user, PASSWORD)
    for fields, words in (
        ({"locale": "xx", "time_zone": ""}, "Language (locale) must be one of en, de, fr, es."),
        (
            {"locale": "", "time_zone": "Mars/Olympus"},
            "Time zone must be an IANA time zone name such as Europe/Berlin.",
        ),
    ):
        refused = await post_form(gw, "/account", fields)
        assert refused.status == 422
        assert words in await refused.text()
    assert "identity.preferences" not in backend.calls
    # The form needs its CSRF token like every other.
    forged = await gw.post("/account", data={"locale": "de"}, allow_redirects=False)
    assert forged.status == 403


async def test_account_needs_a_log_in(gw: TestClient[Any, Any]) -> None:
    response = await gw.get("/account", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login?next=/account"


async def test_the_accept_page_speaks_the_invitation_language(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("greta-lang@example.com", portal, locale="de")
    response = await gw.get(f"/invitations/accept?token={token}", headers={"Accept-Language": "fr"})
    page = await response.text()
    assert lang_of(page) == "de" and response.headers["Content-Language"] == "de"
    assert "<h1>Einladung annehmen</h1>" in page
    assert ">Passwort festlegen</button>" in page

    # The new account keeps the invitation's language: the portal opens in German.
    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    accepted = await post_form(gw, "/invitations/accept", data)
    assert accepted.status == 303, await accepted.text()
    user = backend.by_email("greta-lang@example.com")
    assert user is not None and user["locale"] == "de"
    portal_page = await gw.get("/client-portal/acme-launch/")
    assert lang_of(await portal_page.text()) == "de"


async def test_an_invitation_without_language_follows_the_browser(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    portal = backend.add_portal("Acme Launch")
    token = backend.add_invitation("hugo-lang@example.com", portal)
    page = await (
        await gw.get(f"/invitations/accept?token={token}", headers={"Accept-Language": "fr"})
    ).text()
    assert lang_of(page) == "fr" and "<h1>Accepter l'invitation</h1>" in page


async def test_errors_and_form_messages_are_translated(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    missing = await gw.get("/no-such-page", headers={"Accept-Language": "de"})
    assert missing.status == 404
    assert "<h1>Seite nicht gefunden</h1>" in await missing.text()
    bad = await post_form(
        gw,
        "/login",
        {"email": "nobody@example.com", "password": "x" * 12},
        headers={"Accept-Language": "es"},
    )
    assert "El correo electrónico o la contraseña no son correctos." in await bad.text()


async def test_the_api_takes_and_refuses_a_locale(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    admin = backend.add_user("admin-lang@example.com", PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    headers = {"X-CSRF-Token": await csrf(gw)}
    portal = backend.add_portal("Acme")
    path = f"/api/v1/portals/{portal['id']}/invitations"
    made = await gw.post(
        path, json={"email": "ina-lang@example.com", "locale": "de"}, headers=headers
    )
    assert made.status == 201, await made.text()
    assert (await made.json())["invitation"]["locale"] == "de"
    assert backend.invite_bodies[-1]["locale"] == "de"

    refused = await gw.post(
        path, json={"email": "jo-lang@example.com", "locale": "xx"}, headers=headers
    )
    assert refused.status == 422
    error = (await refused.json())["error"]
    assert "Language (locale) must be one of en, de, fr, es." in error["message"], error
    assert len(backend.invite_bodies) == 1


def test_times_are_shown_in_the_reader_zone_and_language() -> None:
    i18n.use("en", "UTC")
    assert i18n.when("2026-11-25T10:51:00+00:00") == "2026-11-25 10:51 UTC"
    i18n.use("de", "Europe/Berlin")
    assert i18n.when("2026-11-25T10:51:00+00:00") == "25.11.2026, 11:51:00 CET"
    # A zone the database knows by its offset only says so.
    i18n.use("en", "America/Sao_Paulo")
    assert i18n.when("2026-11-25T10:51:00+00:00") == "2026-11-25 07:51 UTC-03"
    i18n.use("es", "Asia/Dubai")
    assert i18n.when("2026-11-25T10:51:00+00:00") == "25 nov 2026, 14:51:00 UTC+04"
    i18n.use("en", "UTC")


def test_language_choice_order() -> None:
    brand = {"default_locale": "fr"}
    assert i18n.choose_language({"locale": "es"}, "de", brand, "de") == "es"
    assert i18n.choose_language({"locale": None}, "de", brand, "es") == "es"
    assert i18n.choose_language(None, "de", brand) == "de"
    assert i18n.choose_language(None, "ja", brand) == "fr"
    assert i18n.choose_language(None, None, None) == "en"
    assert i18n.choose_zone({"time_zone": None}, {"time_zone": "Europe/Paris"}) == "Europe/Paris"
    assert i18n.choose_zone(None, {"time_zone": "Nowhere/Else"}) == "UTC"
