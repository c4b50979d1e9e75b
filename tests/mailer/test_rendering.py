"""Templates and MIME: what the recipient sees."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from services.mailer.branding.domain import Branding
from services.mailer.domain import InvalidContext
from services.mailer.rendering import (
    CATALOGUES,
    Email,
    Rendered,
    branded_from,
    build_message,
    new_environment,
    render,
)
from tests.support.smtp import accept_link, html_part, text_part

URL = "http://localhost:8080/invitations/accept?token=abc_DEF-123"
INVITATION = {
    "accept_url": URL,
    "portal_title": "Acme Rebrand",
    "site_name": "Northwind Agency",
    "expires_at": "2026-12-09T15:30:00+00:00",
    "invited_by": "Jane Admin",
}


def _message(
    template: str, context: dict[str, str], to: str = "client@example.com"
) -> EmailMessage:
    return _parsed(_built(render(new_environment(), template, context), to=to))


def _built(rendered: Rendered, to: str = "client@example.com") -> Email:
    return build_message(
        rendered,
        mail_id=uuid.UUID(int=7),
        to=to,
        mail_from="ClientPress <no-reply@example.org>",
        now=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
    )


def _parsed(built: Email) -> EmailMessage:
    # Read back as a mail client would: UTF-8 (RFC 6532), its own line ends.
    text = built.data.decode("utf-8").replace("\r\n", "\n")
    parsed = email.message_from_string(text, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    return parsed


def test_invitation_subject_and_headers() -> None:
    msg = _message("invitation", INVITATION)
    assert msg["Subject"] == "You're invited to Acme Rebrand on Northwind Agency"
    assert msg["To"] == "client@example.com"
    assert msg["From"] == "ClientPress <no-reply@example.org>"
    assert msg["Message-ID"] == f"<{uuid.UUID(int=7)}@example.org>"
    assert msg["Date"]


def test_invitation_html_has_a_button_styled_accept_link() -> None:
    html = html_part(_message("invitation", INVITATION))
    assert accept_link(_message("invitation", INVITATION)) == URL
    button = html[html.index(f'<a href="{URL}"') :]
    button = button[: button.index("</a>") + 4]
    assert "Accept Invitation</a>" in button
    assert 'style="' in button and "background-color" in button
    assert "Acme Rebrand" in html and "Northwind Agency" in html
    assert "This link expires on 9 December 2026 at 15:30 UTC." in html
    assert "Jane Admin" in html
    # Inline styles only, no external resources.
    assert "<style" not in html and "<link" not in html and "<img" not in html


def test_invitation_text_part_has_the_same_information() -> None:
    text = text_part(_message("invitation", INVITATION))
    assert URL in text
    assert "Accept Invitation" in text
    assert "Acme Rebrand" in text and "Northwind Agency" in text
    assert "This link expires on 9 December 2026 at 15:30 UTC." in text


def test_values_are_escaped_in_html_and_subject_stays_one_line() -> None:
    context = {**INVITATION, "portal_title": '<script>alert(1)</script>\r\nBcc: x@y.z "q"'}
    msg = _message("invitation", context)
    html = html_part(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert msg["Bcc"] is None


def test_password_reset() -> None:
    url = "https://portal.example.com/reset-password?token=xyz"
    msg = _message(
        "password_reset",
        {"reset_url": url, "site_name": "Northwind", "expires_at": "2026-12-09T15:30:00Z"},
    )
    html = html_part(msg)
    assert f'<a href="{url}"' in html and "Reset Password</a>" in html
    assert "15:30 UTC on 9 December 2026" in html
    assert url in text_part(msg)
    assert msg["Subject"] == "Reset your password on Northwind"


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("invitation", {k: v for k, v in INVITATION.items() if k != "accept_url"}),
        ("invitation", {**INVITATION, "accept_url": "javascript:alert(1)"}),
        ("invitation", {**INVITATION, "expires_at": "next tuesday"}),
        ("newsletter", INVITATION),
    ],
)
def test_unusable_context_is_refused(template: str, context: dict[str, str]) -> None:
    with pytest.raises(InvalidContext):
        render(new_environment(), template, context)


def test_invitation_shows_the_personal_message_escaped_and_the_expiry() -> None:
    note = 'Hi Jane,\n<script>alert("x")</script> & <b>welcome</b>!'
    context = {**INVITATION, "personal_message": note, "expires_in_days": "21"}
    msg = _message("invitation", context)
    html, text = html_part(msg), text_part(msg)
    assert "<script>" not in html and "<b>welcome" not in html
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;welcome&lt;/b&gt;!" in html
    )
    assert "A message from <bdi>Jane Admin</bdi>:" in html and "white-space:pre-line" in html
    assert "A message from Jane Admin:" in text and note in text
    for part in (html, text):
        assert (
            "This link expires on 9 December 2026 at 15:30 UTC (21 days after it was sent)." in part
        )
    # Without them the email reads as before.
    plain = html_part(_message("invitation", INVITATION))
    assert "A message" not in plain and "days after it was sent" not in plain


def test_an_invitation_says_the_hour_and_the_zone_its_link_expires_at() -> None:
    """The day alone reads as "all that day": in Los Angeles a link that expires on 9
    December 2026 at 23:00 UTC is dead from 15:00 on the 9th. The agency's zone, named."""
    late = {**INVITATION, "expires_at": "2026-12-09T23:00:00+00:00"}
    for template in ("invitation", "staff_invitation"):
        context = {**late, "role_name": "Staff"} if template == "staff_invitation" else late
        for days in ("", "14"):
            rendered = render(
                new_environment(),
                template,
                {**context, "expires_in_days": days},
                time_zone="America/Los_Angeles",
            )
            for part in (rendered.html, rendered.text):
                assert "This link expires on 9 December 2026 at 15:00 America/Los_Angeles" in part


def test_an_internationalised_address_is_written_as_it_is_and_asks_for_smtputf8() -> None:
    """RFC 6532: the To of an address with non-ASCII characters is UTF-8 as it stands.
    The stdlib's compat32 generator wrote it as an RFC 2047 word, which no mail client
    reads as an address."""
    built = _built(render(new_environment(), "invitation", INVITATION), to="jürgen@exämple.de")
    assert built.utf8 and built.to == "jürgen@exämple.de" and built.sender == "no-reply@example.org"
    assert "jürgen@exämple.de".encode() in built.data
    assert _parsed(built)["To"].addresses[0].addr_spec == "jürgen@exämple.de"
    assert not _built(render(new_environment(), "invitation", INVITATION)).utf8


def test_headers_are_folded_and_bodies_survive_quoted_printable() -> None:
    text = (
        "a line with trailing spaces   \n"
        ".a line starting with a dot\n"
        "= signs = and =3D and =_ boundaries\n"
        + "long " * 40
        + "\n"
        + "ünïcödé “quotes” and a tab\there\n"
    )
    rendered = Rendered(
        subject="Zu " + "Ünïcödé Pörtal " * 8 + "eingeladen",
        text=text,
        html="<p>" + text.replace("\n", "<br>\n") + "</p>",
        language="de",
    )
    built = _built(rendered)
    assert built.data.isascii()
    head = built.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert all(len(line) <= 76 for line in built.data.split(b"\r\n")[len(head.split(b"\r\n")) :])
    assert b"\n" not in built.data.replace(b"\r\n", b"")
    parsed = _parsed(built)
    assert parsed["Subject"] == rendered.subject
    assert parsed["Content-Language"] == "de"
    assert parsed.get_content_type() == "multipart/alternative"
    assert text_part(parsed) == text
    assert html_part(parsed) == rendered.html


@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"invitee_name": "Zoë"}, {"portal_titles": '["Acme Rebrand", "Second"]'}],
    ids=["one portal", "a greeting", "several portals"],
)
def test_the_text_part_sets_its_heading_apart_with_a_blank_line(
    language: str, extra: dict[str, str]
) -> None:
    # As the reminder, the staff invitation and the reset do; a plain-text reader
    # otherwise sees the heading and the first sentence as one paragraph.
    rendered = render(
        new_environment(None, CATALOGUES.get(language)),
        "invitation",
        {**INVITATION, **extra},
        language=language,
    )
    heading, gap, first = rendered.text.split("\n")[:3]
    assert heading and gap == "" and first, rendered.text[:300]


@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ("invitation", {}),
        ("invitation", {"portal_titles": '["Acme Rebrand", "Second"]'}),
        ("invitation_reminder", {}),
    ],
    ids=["one portal", "several portals", "reminder"],
)
def test_a_person_with_an_account_is_asked_to_log_in_not_to_set_a_password(
    language: str, template: str, extra: dict[str, str]
) -> None:
    # Every invitation said "set your password. Your account is created for you", also
    # to a person who had one; the link then asked them to log in.
    environment = new_environment(None, CATALOGUES.get(language))
    newcomer = render(environment, template, {**INVITATION, **extra}, language=language)
    known = render(
        environment, template, {**INVITATION, **extra, "has_account": "1"}, language=language
    )
    for part in ("text", "html"):
        assert getattr(known, part) != getattr(newcomer, part)
    if language == "en":
        for part in (known.text, known.html):
            assert "log in with your account" in part and "set your password" not in part
        for part in (newcomer.text, newcomer.html):
            assert "set your password" in part and "log in" not in part


def test_a_header_with_a_long_unbroken_word_is_still_folded_to_78() -> None:
    # A portal title of TITLE_MAX characters without a space (a project code, a URL)
    # and an Agency Name of 100: folding at spaces alone left lines of 200 and more.
    title = "ACME-2026-Q4-Website-Relaunch-" * 6 + "x" * 20
    agency = "NorthwindCreativeAgency" * 4 + "Berlin-GmbH"
    built = build_message(
        render(new_environment(), "invitation", {**INVITATION, "portal_title": title}),
        mail_id=uuid.UUID(int=7),
        to="client@example.com",
        mail_from=f"{agency} <no-reply@example.org>",
        now=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
    )
    head = built.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78, head.decode()
    parsed = _parsed(built)
    assert parsed["Subject"] == f"You're invited to {title} on Northwind Agency"
    # As RFC 2047 reads it (the space between two encoded words is not text); Python's
    # address parser keeps it.
    raw_from = email.message_from_bytes(built.data)["From"]
    decoded = str(email.header.make_header(email.header.decode_header(raw_from)))
    assert email.utils.parseaddr(decoded) == (agency, "no-reply@example.org")


def _as_shown(raw: str) -> str:
    """A header as a mail client shows it: every RFC 2047 word decoded, once."""
    return str(email.header.make_header(email.header.decode_header(raw)))


@pytest.mark.parametrize(
    "agency",
    [
        "Agence Numérique du Grand Ouest et des Territoires Associés",
        "Müller & Söhne Kommunikationsagentur für Mittelstand und Handwerk GmbH",
        "ö" * 50,
        '=?utf-8?q?Your_Bank?= "Support", \\ Team',
    ],
)
def test_a_long_agency_name_with_accents_is_the_senders_name_as_typed(agency: str) -> None:
    """branded_from writes a non-ASCII Agency Name as RFC 2047 words already; a From
    line that came out longer than 78 encoded those words a second time, so the inbox
    showed "=?utf-8?q?Agence_Num=C3=A9rique_du_Grand..." as the sender."""
    built = build_message(
        render(new_environment(), "invitation", INVITATION),
        mail_id=uuid.UUID(int=7),
        to="client@example.com",
        mail_from=branded_from("ClientPress <no-reply@example.org>", Branding(agency_name=agency)),
        now=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
    )
    head = built.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78, head.decode()
    words, _, address = email.message_from_bytes(built.data)["From"].rpartition(" <")
    assert (_as_shown(words), address) == (agency, "no-reply@example.org>")


@pytest.mark.parametrize(
    "title", ["=?utf-8?q?Your_account_is_locked?=", "Plan =?UTF-8?B?w7Zm?= v2", "=?x?="]
)
def test_a_title_that_looks_like_an_encoded_word_is_shown_as_typed(title: str) -> None:
    """Plain ASCII went into Subject as it was, so a portal title written as an RFC 2047
    word was shown decoded: another text than the portal's name."""
    msg = _message("invitation", {**INVITATION, "portal_title": title})
    raw = email.message_from_bytes(
        _built(render(new_environment(), "invitation", {**INVITATION, "portal_title": title})).data
    )["Subject"]
    assert _as_shown(raw) == f"You're invited to {title} on Northwind Agency"
    assert msg["Subject"] == f"You're invited to {title} on Northwind Agency"


def test_auto_responders_are_told_not_to_answer() -> None:
    # RFC 3834 for most; Exchange's out-of-office and auto-reply rules read their own
    # header. Not NDR: a bounce still comes back.
    msg = _message("invitation", INVITATION)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    # Transactional: no list headers, which would offer to unsubscribe from one's invitation.
    assert msg["List-Unsubscribe"] is None and msg["Precedence"] is None
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
