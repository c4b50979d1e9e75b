"""Every email as a spam filter reads it: SpamAssassin (local tests only, no network, no
Bayes: its score set 0) on each template in the four languages, built-in and branded
(Agency Name, logo, Reply-To, footer) with a Personal Message of long non-ASCII lines.
The messages are composed as the mailer composes them (sender.py: with_branding,
branded_from, build_message). .ci/run installs spamassassin."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import mailbox
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from libs.common.bus import Bus
from libs.common.i18n import LANGUAGES
from services.mailer.branding.domain import Branding
from services.mailer.rendering import (
    REPLY_TO_TEMPLATES,
    Templates,
    branded_from,
    build_message,
    with_branding,
)
from tests.mailer.conftest import StartMailer, invitation_job, publish_job
from tests.mailer.test_branding import Internal, mailer_pool, png
from tests.support.env import TestEnv
from tests.support.smtp import SmtpSink, html_part

# A short site and real-length tokens: the least HTML beside a logo.
PUBLIC = "https://cp.example"
TOKEN = "Xb3_vQ9-kLm2nPq8rSt4uVw6xYz0aBcDeFgHiJkLmNo"  # secrets.token_urlsafe(32)
ACCEPT = f"{PUBLIC}/invitations/accept?token={TOKEN}"
RESET = f"{PUBLIC}/reset-password?token={TOKEN}"
EXPIRES = "2026-12-09T15:30:00+00:00"
SITE = "cp.example"
MESSAGE = (
    "Hallo Zoë, wir freuen uns auf die Zusammenarbeit — bitte schauen Sie sich die "
    "Entwürfe für die Überarbeitung Ihrer Markenidentität an und geben Sie uns bis "
    "Freitag Bescheid. Viele Grüße aus Köln!\nZweite Zeile: à bientôt, ¡hasta pronto!"
)
# (template, context): every email the mailer sends.
EMAILS: dict[str, tuple[str, dict[str, str]]] = {
    "invitation": (
        "invitation",
        {
            "accept_url": ACCEPT,
            "portal_title": "Acme Rebrand",
            "site_name": SITE,
            "expires_at": EXPIRES,
            "invited_by": "Jürgen Müller",
            "personal_message": MESSAGE,
            "expires_in_days": "14",
            "invitee_name": "Zoë Ångström",
        },
    ),
    "several portals": (
        "invitation",
        {
            "accept_url": ACCEPT,
            "portal_title": "Acme Rebrand",
            "portal_titles": json.dumps(["Acme Rebrand", "Société Générale", "Third"]),
            "site_name": SITE,
            "expires_at": EXPIRES,
        },
    ),
    "reminder": (
        "invitation_reminder",
        {"accept_url": ACCEPT, "portal_title": "Acme", "site_name": SITE, "expires_at": EXPIRES},
    ),
    "staff invitation": (
        "staff_invitation",
        {"accept_url": ACCEPT, "site_name": SITE, "expires_at": EXPIRES, "role_name": "Staff"},
    ),
    "password reset": (
        "password_reset",
        {"reset_url": RESET, "site_name": SITE, "expires_at": EXPIRES},
    ),
}
BRANDINGS = {
    "built-in": Branding(),
    "branded": Branding(
        agency_name="Nörthwind Ägency",
        accent_colour="#aa3300",
        reply_to="hello@northwind-agency.example",
        footer_text="Nörthwind Ägency GmbH\nHauptstraße 1, 10115 Berlin",
        logo_etag="0123456789abcdef",
        logo_type="image/png",
        logo_width=300,
        logo_height=100,
    ),
    # The least text beside a logo: no Agency Name (its alt is the site), no footer; and
    # a logo uploaded before its size was kept (the older markup).
    "logo only": Branding(
        logo_etag="0123456789abcdef", logo_type="image/png", logo_width=90, logo_height=30
    ),
    "older logo": Branding(logo_etag="0123456789abcdef", logo_type="image/png"),
}
# The rules that say only what any message handed straight to a filter is: no score.
INFORMATIONAL = {"NO_RECEIVED", "NO_RELAYS", "HTML_MESSAGE"}
MAX_SCORE = 1.0
__all__ = ["mailer_pool"]  # the fixture, which leaves the built-in branding behind


def every_email(
    only: dict[str, tuple[str, dict[str, str]]] | None = None,
    brandings: dict[str, Branding] | None = None,
) -> dict[str, bytes]:
    """Each email (or ``only`` these) in each language and look, by a readable name."""
    templates = Templates()
    found = {}
    for name, (template, context) in (only or EMAILS).items():
        for language in LANGUAGES:
            for look, branding in (brandings or BRANDINGS).items():
                rendered = templates.render(
                    template,
                    with_branding(context, branding, PUBLIC),
                    language=language,
                    time_zone="Europe/Berlin",
                )
                found[f"{name}, {language}, {look}"] = build_message(
                    rendered,
                    mail_id=uuid.uuid4(),
                    to="zoe@client.example",
                    mail_from=branded_from(
                        "ClientPress <no-reply@northwind-agency.example>", branding
                    ),
                    now=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
                    reply_to=branding.reply_to if template in REPLY_TO_TEMPLATES else None,
                ).data
    return found


def spamassassin(messages: dict[str, bytes], work: Path) -> dict[str, tuple[float, list[str]]]:
    """Each message's score and the rules that fired, from one spamassassin run over an
    mbox of them all (-L: local tests only)."""
    binary = shutil.which("spamassassin")
    assert binary, "spamassassin is missing: apt-get install spamassassin (.ci/run installs it)"
    box = mailbox.mbox(work / "in.mbox")
    ids = {}
    for name, data in messages.items():
        parsed = email.message_from_bytes(data, policy=email.policy.compat32)
        ids[parsed["Message-ID"]] = name
        box.add(parsed)
    box.flush()
    with (work / "in.mbox").open("rb") as stdin:
        done = subprocess.run(
            [binary, "-L", "-x", "--mbox"],
            stdin=stdin,
            capture_output=True,
            check=True,
            timeout=600,
            env={"HOME": str(work), "PATH": "/usr/bin:/bin"},
        )
    (work / "out.mbox").write_bytes(done.stdout)
    reports = {}
    for scanned in mailbox.mbox(work / "out.mbox"):
        status = " ".join(str(scanned["X-Spam-Status"]).split())
        score = float(status.split("score=")[1].split()[0])
        tests = status.split("tests=")[1].split(" autolearn=")[0].split()[0]
        reports[ids[scanned["Message-ID"]]] = (score, [t for t in tests.split(",") if t])
    assert set(reports) == set(messages)
    return reports


def test_no_email_gives_a_spam_filter_a_reason(tmp_path: Path) -> None:
    reports = spamassassin(every_email(), tmp_path)
    punished = {
        name: (score, [rule for rule in rules if rule not in INFORMATIONAL])
        for name, (score, rules) in reports.items()
        if score >= MAX_SCORE or not set(rules) <= INFORMATIONAL
    }
    assert not punished, f"SpamAssassin scores and rules: {dict(sorted(punished.items()))}"


@pytest.mark.integration
async def test_a_branded_reminder_from_the_mailer_gives_a_spam_filter_no_reason(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    publisher: Bus,
    mailer_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """The same through the real mailer and an SMTP server: Settings → Branding with a
    logo, the shortest email (a reminder), its bytes as they arrived."""
    client = await start_mailer(smtp_sink.port, public_url=PUBLIC)
    api = Internal(client, migrated_schemas)
    status, body = await api.call(
        "PUT", "/branding", json={"agency_name": "Northwind", "reply_to": "hi@cp.example"}
    )
    assert status == 200, body
    status, body = await api.call(
        "PUT", "/branding/logo", json={"content": base64.b64encode(png()).decode()}
    )
    assert status == 200, body
    to = f"client-{uuid.uuid4().hex[:8]}@example.com"
    job, _ = invitation_job(to, accept_url=ACCEPT, site_name=SITE, portal_title="Acme")
    await publish_job(publisher, job.model_copy(update={"template": "invitation_reminder"}))

    [msg] = await smtp_sink.sink.wait_for(to)
    assert "<img " in html_part(msg)
    [(score, rules)] = spamassassin({"reminder": smtp_sink.sink.raw_of(msg)}, tmp_path).values()
    assert score < MAX_SCORE and set(rules) <= INFORMATIONAL, (score, rules)
