"""Issue 17, emails in the reader's language on the real database, broker and an SMTP
sink: the job's locale, else Settings → Branding's Language; the link's expiry in the
branding's Time Zone, written as the language writes dates; Content-Language."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from email.header import decode_header, make_header
from typing import Any

import asyncpg
import pytest

from libs.common.bus import Bus
from libs.common.events import MailRequested
from services.mailer.rendering import Templates
from tests.mailer.conftest import StartMailer, invitation_job, publish_job, wait_for_row
from tests.support.env import TestEnv
from tests.support.smtp import SmtpSink, html_part, text_part

pytestmark = pytest.mark.integration

PoolFactory = Callable[[str], Any]
LANGUAGE_MESSAGE = "Language (locale) must be one of en, de, fr, es."
ZONE_MESSAGE = "Time zone must be an IANA time zone name such as Europe/Berlin."


@pytest.fixture
async def mailer_pool(pool_factory: PoolFactory) -> AsyncIterator[asyncpg.Pool]:
    pool: asyncpg.Pool = await pool_factory("mailer")
    yield pool
    # The run's database is shared: leave the built-in branding for the next test.
    await pool.execute("DELETE FROM branding")


def subject(msg: Any) -> str:
    """The decoded Subject (a non-ASCII one travels RFC 2047 encoded)."""
    return str(make_header(decode_header(str(msg["Subject"])))).strip()


def new_address() -> str:
    return f"lang-{uuid.uuid4().hex[:10]}@example.com"


async def put_branding(client: Any, env: TestEnv, **fields: str) -> tuple[int, Any]:
    headers = env.keys.headers("gateway", "mailer")
    response = await client.put("/branding", json=fields, headers=headers)
    return response.status, await response.json()


async def test_a_german_invitation_in_the_agencys_time_zone(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    publisher: Bus,
    mailer_pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(smtp_sink.port)
    status, body = await put_branding(client, migrated_schemas, time_zone="Europe/Berlin")
    assert status == 200, body
    assert body["time_zone"] == "Europe/Berlin" and body["default_locale"] == "en"
    to = new_address()
    job, _ = invitation_job(to, expires_at="2026-12-09T23:30:00+00:00", expires_in_days="14")
    job = job.model_copy(update={"locale": "de"})
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Content-Language"] == "de"
    assert subject(msg) == "Sie sind zu Acme Rebrand auf Northwind Agency eingeladen"
    text, html = text_part(msg), html_part(msg)
    # 23:30 UTC on the 9th is past midnight in Berlin: the 10th, as German writes it.
    assert (
        "Dieser Link läuft am 10. Dezember 2026 um 00:30 Europe/Berlin ab"
        " (14 Tage nach dem Versand)."
    ) in text
    assert "Jane Admin hat Sie zu Ihrem Kundenportal „Acme Rebrand“" in text
    assert "Einladung annehmen" in html and '<html lang="de" dir="ltr"' in html
    assert "You're invited" not in text + html
    await wait_for_row(mailer_pool, job.mail_id, lambda r: r["status"] == "sent")


async def test_the_branding_language_when_the_job_names_none(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    publisher: Bus,
    mailer_pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(smtp_sink.port)
    status, body = await put_branding(client, migrated_schemas, default_locale="fr")
    assert status == 200 and body["default_locale"] == "fr" and body["time_zone"] == "UTC"
    to = new_address()
    job, _ = invitation_job(to)
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Content-Language"] == "fr"
    assert subject(msg) == "Vous êtes invité à Acme Rebrand sur Northwind Agency"
    assert "Ce lien expire le 9 décembre 2026 à 15:30 UTC." in text_part(msg)

    # A job's own language wins over the agency's.
    to = new_address()
    job, _ = invitation_job(to)
    await publish_job(publisher, job.model_copy(update={"locale": "es"}))
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Content-Language"] == "es"
    assert subject(msg) == "Está invitado a Acme Rebrand en Northwind Agency"


async def test_a_password_reset_in_the_users_language(
    start_mailer: StartMailer, smtp_sink: SmtpSink, publisher: Bus, mailer_pool: asyncpg.Pool
) -> None:
    await start_mailer(smtp_sink.port)
    to = new_address()
    job = MailRequested(
        mail_id=uuid.uuid4(),
        template="password_reset",
        to=to,
        ref_type="password_reset",
        ref_id=uuid.uuid4(),
        context={
            "reset_url": "https://portal.example.com/reset-password?token=abc",
            "site_name": "portal.example.com",
            "expires_at": "2026-12-09T15:30:00+00:00",
        },
        locale="es",
    )
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Content-Language"] == "es"
    assert subject(msg) == "Restablezca su contraseña en portal.example.com"
    assert "Este enlace caduca el 9 de diciembre de 2026 a las 15:30 UTC." in text_part(msg)


async def test_english_stays_as_it_was(
    start_mailer: StartMailer, smtp_sink: SmtpSink, publisher: Bus, mailer_pool: asyncpg.Pool
) -> None:
    await start_mailer(smtp_sink.port)
    to = new_address()
    job, _ = invitation_job(to)
    await publish_job(publisher, job.model_copy(update={"locale": "xx"}))  # unknown: default
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Content-Language"] == "en"
    assert subject(msg) == "You're invited to Acme Rebrand on Northwind Agency"
    assert (
        "This link expires on 9 December 2026 at 15:30 UTC. It can be used only once."
        in text_part(msg)
    )


async def test_branding_language_and_zone_are_checked(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    mailer_pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(smtp_sink.port)
    for fields, code, message in (
        ({"default_locale": "it"}, "invalid_default_locale", LANGUAGE_MESSAGE),
        ({"time_zone": "Mars/Olympus"}, "invalid_time_zone", ZONE_MESSAGE),
    ):
        status, body = await put_branding(client, migrated_schemas, **fields)
        assert status == 422, body
        assert body["error"]["code"] == code and body["error"]["message"] == message
    status, body = await put_branding(client, migrated_schemas, default_locale="de")
    assert status == 200 and body["default_locale"] == "de"


def test_overrides_can_translate_and_a_broken_one_falls_back_translated(tmp_path: Any) -> None:
    (tmp_path / "invitation.subject.txt").write_text('{{ _("Accept Invitation") }}: {{ language }}')
    (tmp_path / "password_reset.subject.txt").write_text("{{ no_such_value }}")
    templates = Templates(tmp_path)
    context = {
        "accept_url": "https://portal.example.com/a?token=t",
        "reset_url": "https://portal.example.com/r?token=t",
        "portal_title": "Acme",
        "site_name": "Agentur",
        "expires_at": "2026-12-09T15:30:00+00:00",
    }
    rendered = templates.render("invitation", context, language="de")
    assert rendered.subject == "Einladung annehmen: de" and rendered.language == "de"
    # The broken override is logged and the built-in template, in the language, is used.
    rendered = templates.render("password_reset", context, language="fr")
    assert rendered.subject == "Réinitialisez votre mot de passe sur Agentur"


@pytest.mark.parametrize(
    ("language", "role_name", "said"),
    [
        ("de", "Administrator", "als Administrator"),
        ("de", "Staff", "als Mitarbeiter"),
        ("fr", "Staff", "en tant que Équipe"),
        ("es", "Administrator", "como Administrador"),
        ("en", "Staff", "as Staff"),
    ],
)
def test_the_role_in_a_staff_invitation_is_in_the_emails_language(
    language: str, role_name: str, said: str
) -> None:
    context = {
        "accept_url": "https://portal.example.com/a?token=t",
        "site_name": "Agentur",
        "role_name": role_name,
        "expires_at": "2026-12-09T15:30:00+00:00",
    }
    rendered = Templates().render("staff_invitation", context, language=language)
    assert said in rendered.text and said in rendered.html, rendered.text
    # A name the producer wrote that we have no word for is shown as it came.
    rendered = Templates().render(
        "staff_invitation", {**context, "role_name": "Owner"}, language=language
    )
    assert "Owner" in rendered.text
