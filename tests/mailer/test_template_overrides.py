"""MAIL_TEMPLATES_DIR: a valid override is used, file by file; a broken one (a syntax
error, a variable the job doesn't have) is logged and the email goes out with the
built-in template, on the real mailer too."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from libs.common.bus import Bus
from services.mailer.domain import InvalidContext
from services.mailer.rendering import Templates
from tests.mailer.conftest import StartMailer, invitation_job, publish_job
from tests.support.smtp import SmtpSink, html_part, text_part

CONTEXT = {
    "accept_url": "http://localhost:8080/invitations/accept?token=abc",
    "portal_title": "Acme Rebrand",
    "site_name": "Northwind Agency",
    "expires_at": "2026-12-09T15:30:00+00:00",
}
BUILT_IN_SUBJECT = "You're invited to Acme Rebrand on Northwind Agency"


def overrides(directory: Path, **files: str) -> Path:
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return directory


def errors(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["log_level"] == "error"]


def test_a_valid_override_is_used_and_the_rest_stays_built_in(tmp_path: Path) -> None:
    overrides(
        tmp_path,
        invitation__subject__txt="Welcome to {{ portal_title }}, from {{ agency_name }}",
        invitation__html=(
            '{% extends "layout.html" %}{% block body %}<p>Our own words for'
            " {{ portal_title }}.</p>"
            '{% with url=accept_url, label="Accept Invitation" %}{% include "button.html" %}'
            "{% endwith %}{% endblock %}"
        ),
    )
    with capture_logs() as logs:
        rendered = Templates(tmp_path).render("invitation", CONTEXT)
    assert rendered.subject == "Welcome to Acme Rebrand, from Northwind Agency"
    assert "<p>Our own words for Acme Rebrand.</p>" in rendered.html
    assert f'<a href="{CONTEXT["accept_url"]}"' in rendered.html  # the built-in button
    assert "Accept Invitation: open this link" in rendered.text  # not overridden
    assert errors(logs) == []


def test_a_syntax_error_falls_back_to_the_built_in_template_with_a_logged_error(
    tmp_path: Path,
) -> None:
    overrides(tmp_path, invitation__html="<p>{% if portal_title %}Unclosed</p>")
    with capture_logs() as logs:
        templates = Templates(tmp_path)
        rendered = templates.render("invitation", CONTEXT)
    assert rendered.subject == BUILT_IN_SUBJECT
    assert "Accept Invitation</a>" in rendered.html
    assert "Unclosed" not in rendered.html
    [at_start, at_send] = errors(logs)
    assert at_start["event"] == "mail_template_override_broken"
    assert at_start["file"] == "invitation.html"
    assert "invitation.html:1:" in at_start["error"]
    assert at_send["event"] == "mail_template_override_failed"
    assert at_send["template"] == "invitation"
    assert at_send["error_type"] == "TemplateSyntaxError"
    assert at_send["fallback"] == "built-in"


def test_an_undefined_variable_falls_back_to_the_built_in_template(tmp_path: Path) -> None:
    overrides(tmp_path, invitation__txt="Hello {{ client_nickname }}, {{ accept_url }}")
    with capture_logs() as logs:
        rendered = Templates(tmp_path).render("invitation", CONTEXT)
    assert "Hello" not in rendered.text
    assert "Accept Invitation: open this link" in rendered.text
    [failed] = errors(logs)
    assert failed["event"] == "mail_template_override_failed"
    assert failed["error_type"] == "UndefinedError"
    assert failed["error"] == "'client_nickname' is undefined"
    assert "token=abc" not in str(failed)  # never the link


def test_a_job_missing_what_the_template_needs_is_refused_either_way(tmp_path: Path) -> None:
    overrides(tmp_path, invitation__txt="{{ accept_url }}")
    with pytest.raises(InvalidContext, match="portal_title"):
        Templates(tmp_path).render("invitation", {**CONTEXT, "portal_title": ""})


def test_a_missing_directory_is_logged_and_the_built_in_templates_are_used(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        rendered = Templates(tmp_path / "not-mounted").render("invitation", CONTEXT)
    assert rendered.subject == BUILT_IN_SUBJECT
    assert [e["event"] for e in errors(logs)] == ["mail_templates_dir_missing"]


def test_unknown_files_are_pointed_out(tmp_path: Path) -> None:
    overrides(tmp_path, invitaton__html="typo in the name")
    with capture_logs() as logs:
        Templates(tmp_path)
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "mail_template_override_unknown"
    assert warning["files"] == ["invitaton.html"]


@pytest.mark.integration
async def test_broken_overrides_still_send_with_the_built_in_templates(
    tmp_path: Path, start_mailer: StartMailer, smtp_sink: SmtpSink, publisher: Bus
) -> None:
    overrides(
        tmp_path,
        invitation__subject__txt="{% for %}",
        invitation__txt="Hi {{ nickname }}",
        invitation__html="<p>{{ accept_url | no_such_filter }}</p>",
    )
    await start_mailer(smtp_sink.port, mail_templates_dir=str(tmp_path))
    to = f"client-{uuid.uuid4().hex[:8]}@example.com"
    job, _ = invitation_job(to)
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Subject"] == "You're invited to Acme Rebrand on Northwind Agency"
    assert "Accept Invitation: open this link" in text_part(msg)
    assert "Accept Invitation</a>" in html_part(msg)


@pytest.mark.integration
async def test_a_valid_override_is_what_the_mailer_sends(
    tmp_path: Path, start_mailer: StartMailer, smtp_sink: SmtpSink, publisher: Bus
) -> None:
    overrides(tmp_path, invitation__subject__txt="{{ portal_title }} is ready for you")
    await start_mailer(smtp_sink.port, mail_templates_dir=str(tmp_path))
    to = f"client-{uuid.uuid4().hex[:8]}@example.com"
    job, _ = invitation_job(to)
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    assert msg["Subject"] == "Acme Rebrand is ready for you"
