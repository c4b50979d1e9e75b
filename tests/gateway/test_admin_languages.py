"""Issue 17 on the staff screens: they speak the staff member's language (German here, from
Accept-Language), Invite Client sends the chosen Language (locale) to invitations, and
Settings → Branding saves the agency's Language and Time Zone (in front of the real mailer,
which keeps the branding) and refuses values we don't know."""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.gateway.conftest import csrf, log_in, post_form
from tests.gateway.fakes import Backend, Json
from tests.gateway.test_branding import Start, mailer, post, start_gateway  # noqa: F401

PASSWORD = "correct horse battery"
GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
LOCALE_PROBLEM = "Language (locale) must be one of en, de, fr, es."
ZONE_PROBLEM = "Time zone must be an IANA time zone name such as Europe/Berlin."


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


async def as_admin(gw: TestClient[Any, Any], backend: Backend) -> Json:
    admin = backend.add_user(unique("admin"), PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)
    return admin


def language_options(page: str, select_id: str) -> list[tuple[str, str]]:
    match = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, page
    options = re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', match.group(1))
    return [(value, html.unescape(name)) for value, name in options]


# --- the screens in the staff member's language --------------------------------------------
async def test_the_portal_editor_is_in_german_for_a_german_browser(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    response = await gw.get(f"/admin/portals/{portal['id']}", headers=GERMAN)
    page = await response.text()
    assert response.status == 200
    assert '<html lang="de"' in page
    assert "<h2>Kunden einladen</h2>" in page
    assert ">Einladung senden</button>" in page
    assert ">Unterkunden</label>" in page
    assert '<label for="invite_locale">Sprache</label>' in page
    assert ">21 Tage</option>" in page
    assert "Invite Client" not in page and "Send Invitation" not in page

    # The English screen keeps its words.
    english = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    assert "<h2>Invite Client</h2>" in english
    assert ">Send Invitation</button>" in english
    assert ">Sub-Clients</label>" in english


async def test_the_staff_lists_and_settings_are_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    invited = unique("ann")
    await post_form(gw, f"/admin/portals/{portal['id']}/invite", {"email": invited})

    invitations = await (await gw.get("/admin/invitations", headers=GERMAN)).text()
    assert "<h1>Einladungen</h1>" in invitations
    assert ">Erneut senden</button>" in invitations
    assert ">Widerrufen</button>" in invitations
    assert ">Ausstehend</span>" in invitations

    settings = await (await gw.get("/admin/settings", headers=GERMAN)).text()
    assert ">Ablauf des Einladungslinks</label>" in settings
    assert ">Weiterleitung nach der Anmeldung</label>" in settings

    portals = await (await gw.get("/admin/portals", headers=GERMAN)).text()
    assert "<h1>Alle Portale</h1>" in portals
    assert ">Kunden einladen</button>" in portals


# --- Invite Client: Language --------------------------------------------------------------
async def test_invite_client_offers_the_agency_default_then_each_language_by_its_own_name(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    page = await (await gw.get(f"/admin/portals/{portal['id']}")).text()
    assert '<label for="invite_locale">Language</label>' in page
    assert language_options(page, "invite_locale") == [
        ("", "Agency default"),
        ("en", "English"),
        ("de", "Deutsch"),
        ("fr", "Français"),
        ("es", "Español"),
    ]
    # The names stay each language's own on a German screen; only the default is German.
    german = await (await gw.get(f"/admin/portals/{portal['id']}", headers=GERMAN)).text()
    assert language_options(german, "invite_locale")[:3] == [
        ("", "Agenturstandard"),
        ("en", "English"),
        ("de", "Deutsch"),
    ]


async def test_invite_client_sends_the_chosen_language(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    path = f"/admin/portals/{portal['id']}/invite"
    german = unique("hans")
    response = await post_form(gw, path, {"email": german, "locale": "de"})
    assert response.status == 303
    body = next(b for b in backend.invite_bodies if b["email"] == german)
    assert body["locale"] == "de"
    # The Invitations screen shows an invitation's own language beside its email (the
    # fake keeps no locale: give it the one the invitations service answers with).
    invitation = next(i for i in backend.invitations.values() if i["email"] == german)
    invitation["locale"] = "de"
    listed = await (await gw.get("/admin/invitations")).text()
    assert f'<td>{german} <span class="help" title="Language">(Deutsch)</span></td>' in listed

    # "Agency default" (empty) sends none: the agency's language decides when it goes.
    default = unique("ann")
    response = await post_form(gw, path, {"email": default, "locale": ""})
    assert response.status == 303
    body = next(b for b in backend.invite_bodies if b["email"] == default)
    assert "locale" not in body


async def test_invite_client_refuses_a_language_we_do_not_ship_keeping_the_input(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    email = unique("ann")
    response = await post_form(
        gw, f"/admin/portals/{portal['id']}/invite", {"email": email, "locale": "xx"}
    )
    assert response.status == 422
    page = await response.text()
    assert LOCALE_PROBLEM in page
    assert 'id="invite_locale-error"' in page
    assert f'value="{email}"' in page
    assert not [b for b in backend.invite_bodies if b["email"] == email]


async def test_invite_client_for_several_portals_sends_the_chosen_language(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    first, second = backend.add_portal("Acme"), backend.add_portal("Globex")
    ticked = f"portal_id={first['id']}&portal_id={second['id']}"
    page = await (await gw.get(f"/admin/portals/invite?{ticked}")).text()
    assert language_options(page, "invite_locale")[0] == ("", "Agency default")

    email = unique("marie")
    form = [
        ("csrf_token", await csrf(gw)),
        ("portal_id", first["id"]),
        ("portal_id", second["id"]),
        ("email", email),
        ("locale", "fr"),
    ]
    response = await gw.post("/admin/portals/invite", data=form, allow_redirects=False)
    assert response.status == 303
    body = next(b for b in backend.group_bodies if b["email"] == email)
    assert body["locale"] == "fr"

    form[-1] = ("locale", "klingon")
    response = await gw.post("/admin/portals/invite", data=form, allow_redirects=False)
    assert response.status == 422
    assert LOCALE_PROBLEM in await response.text()


# --- Settings → Branding: Language and Time Zone (the real mailer) ------------------------
@pytest.mark.integration
async def test_branding_saves_the_agency_language_and_time_zone(
    start_gateway: Start,  # noqa: F811
    backend: Backend,
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    page = await (await gw.get("/admin/settings/branding")).text()
    assert '<label for="default_locale">Language</label>' in page
    assert '<label for="time_zone">Time Zone</label>' in page
    assert language_options(page, "default_locale") == [
        ("en", "English"),
        ("de", "Deutsch"),
        ("fr", "Français"),
        ("es", "Español"),
    ]
    assert '<option value="Europe/Berlin">' in page  # the zones the field suggests

    fields = {"agency_name": "Northwind", "default_locale": "de", "time_zone": "Europe/Berlin"}
    saved = await post(gw, "/admin/settings/branding", {"csrf_token": await csrf(gw), **fields})
    assert saved.status == 303
    current = await (await gw.get("/api/v1/settings/branding")).json()
    assert current["default_locale"] == "de"
    assert current["time_zone"] == "Europe/Berlin"
    page = await (await gw.get("/admin/settings/branding", headers=GERMAN)).text()
    assert '<option value="de" lang="de" selected>Deutsch</option>' in page
    assert 'value="Europe/Berlin"' in page
    assert '<label for="time_zone">Zeitzone</label>' in page


@pytest.mark.integration
async def test_branding_refuses_an_unknown_language_or_time_zone(
    start_gateway: Start,  # noqa: F811
    backend: Backend,
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    token = await csrf(gw)
    base = {"csrf_token": token, "agency_name": "Northwind"}

    refused = await post(
        gw, "/admin/settings/branding", {**base, "default_locale": "xx", "time_zone": "UTC"}
    )
    assert refused.status == 422
    page = await refused.text()
    assert LOCALE_PROBLEM in page
    assert 'id="default_locale-error"' in page
    assert 'value="Northwind"' in page  # the form stays filled in

    refused = await post(
        gw,
        "/admin/settings/branding",
        {**base, "default_locale": "de", "time_zone": "Mars/Olympus_Mons"},
    )
    assert refused.status == 422
    page = await refused.text()
    assert ZONE_PROBLEM in page
    assert 'id="time_zone-error"' in page
    assert 'value="Mars/Olympus_Mons"' in page

    # Nothing was saved: the built-in language and zone.
    current = await (await gw.get("/api/v1/settings/branding")).json()
    assert current["agency_name"] == ""
    assert current["default_locale"] == "en"
    assert current["time_zone"] == "UTC"


@pytest.mark.integration
async def test_the_branding_api_takes_and_refuses_language_and_time_zone(
    start_gateway: Start,  # noqa: F811
    backend: Backend,
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    path = "/api/v1/settings/branding"
    bad = await gw.put(path, json={"default_locale": "pt"}, headers=headers)
    assert bad.status == 422
    assert (await bad.json())["error"]["code"] == "invalid_default_locale"
    bad = await gw.put(path, json={"time_zone": "Berlin"}, headers=headers)
    assert bad.status == 422
    error = (await bad.json())["error"]
    assert (error["code"], error["message"]) == ("invalid_time_zone", ZONE_PROBLEM)

    good = await gw.put(
        path, json={"default_locale": "es", "time_zone": "America/Mexico_City"}, headers=headers
    )
    assert good.status == 200, await good.text()
    answer = await good.json()
    assert (answer["default_locale"], answer["time_zone"]) == ("es", "America/Mexico_City")


async def test_invite_staff_sends_the_chosen_language_and_shows_a_refusal_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    page = await (await gw.get("/admin/users")).text()
    assert language_options(page, "staff_locale")[:3] == [
        ("", "Agency default"),
        ("en", "English"),
        ("de", "Deutsch"),
    ]
    email = unique("kollegin")
    form = {"email": email, "role": "staff", "locale": "de"}
    response = await post_form(gw, "/admin/users/invite", form)
    assert response.status == 303
    assert backend.staff_invite_bodies[-1]["locale"] == "de"
    # "Agency default" sends none.
    response = await post_form(
        gw, "/admin/users/invite", {**form, "email": unique("a"), "locale": ""}
    )
    assert response.status == 303
    assert backend.staff_invite_bodies[-1]["locale"] is None
    # The invitations service refuses a language we don't ship; the form stays filled in
    # and says why beside Language, in the staff member's language.
    refused = unique("b")
    response = await post_form(
        gw, "/admin/users/invite", {**form, "email": refused, "locale": "xx"}, headers=GERMAN
    )
    assert response.status == 422
    page = await response.text()
    assert 'id="staff_locale-error"' in page
    assert LOCALE_PROBLEM not in page  # in German
    assert f'value="{refused}"' in page


async def test_the_editor_says_what_is_wrong_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    """The screens were German but what a form said was wrong stayed English: "Enter a
    title.", "Choose 7, 14, 21 or 30 days.", the invitations service's "This person already
    has access…"."""
    await as_admin(gw, backend)
    empty = await post_form(
        gw, "/admin/portals/new", {"title": " ", "status": "closed"}, headers=GERMAN
    )
    assert empty.status == 422
    page = html.unescape(await empty.text())
    assert "Geben Sie einen Titel ein." in page and "Enter a title." not in page
    assert "Wählen Sie Aktiv, Ausstehend oder Archiviert." in page
    client = backend.add_user(unique("kunde"), PASSWORD)
    portal = backend.add_portal("Acme", client_id=client["id"])
    path = f"/admin/portals/{portal['id']}/invite"
    again = await post_form(gw, path, {"email": client["email"]}, headers=GERMAN)
    assert again.status == 422
    page = html.unescape(await again.text())
    assert "Diese Person hat bereits Zugriff auf das Portal" in page
    expiry = await post_form(
        gw, path, {"email": unique("neu"), "expires_in_days": "10"}, headers=GERMAN
    )
    assert "Wählen Sie 7, 14, 21 oder 30 Tage." in html.unescape(await expiry.text())


async def test_a_refused_webhook_target_is_told_in_german(
    start_gateway: Start,  # noqa: F811
    backend: Backend,
) -> None:
    """The mailer refuses the target in English; the Webhooks screen says why in the staff
    member's language, naming the host."""
    gw = await start_gateway()
    await as_admin(gw, backend)
    for url, words in (
        (
            "http://127.0.0.1:9/hook",
            "127.0.0.1 ist eine Loopback-, private oder Link-Local-Adresse; Webhooks gehen nur"
            " an öffentliche Adressen.",
        ),
        (
            "ftp://example.com/hook",
            "Die URL muss eine einzelne http://- oder https://-Adresse sein.",
        ),
        ("https://ann:pw@example.com/hook", "Die URL darf keinen Benutzernamen und kein Passwort"),
    ):
        response = await post_form(
            gw,
            "/admin/settings/webhooks",
            {"url": url, "events": "invitation.created"},
            headers=GERMAN,
        )
        assert response.status == 422, url
        assert words in html.unescape(await response.text()), url


async def test_invite_several_and_resend_say_what_is_wrong_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    """Messages built with a number or a name (an archived portal ticked, a name too long)
    and the Not resent page were English on German screens."""
    await as_admin(gw, backend)
    acme = backend.add_portal("Acme")
    archived = backend.add_portal("Old Site", status="archived")
    page = await (
        await gw.get(f"/admin/portals/invite?portal_id={archived['id']}", headers=GERMAN)
    ).text()
    assert (
        "Nur aktive Portale können Einladungen erhalten: Entfernen Sie das Häkchen bei"
        " 'Old Site' (Archiviert)." in html.unescape(page)
    )
    response = await post_form(
        gw,
        "/admin/portals/invite",
        {"portal_id": acme["id"], "email": unique("lang"), "name": "N" * 201},
        headers=GERMAN,
    )
    assert response.status == 422
    assert "Der Name darf höchstens 200 Zeichen lang sein." in html.unescape(await response.text())


async def test_a_clash_in_the_portal_editor_is_told_in_german(
    gw: TestClient[Any, Any], backend: Backend
) -> None:
    await as_admin(gw, backend)
    portal = backend.add_portal("Acme")
    page = await (await gw.get(f"/admin/portals/{portal['id']}", headers=GERMAN)).text()
    shown = re.search(r'name="shown" value="([^"]+)"', page)
    assert shown, page
    portal.update(title="Acme Gruppe", status="archived")  # saved by someone else meanwhile
    form = {"title": "Acme GmbH", "content": portal["content"], "status": "pending"}
    response = await post_form(
        gw, f"/admin/portals/{portal['id']}", {**form, "shown": shown.group(1)}, headers=GERMAN
    )
    page = html.unescape(await response.text())
    assert response.status == 409
    assert "Jemand anderes hat den Titel in „Acme Gruppe“ geändert" in page
    assert "Jemand anderes hat den Status auf „Archiviert“ geändert" in page
    assert (portal["title"], portal["status"]) == ("Acme Gruppe", "archived")
