"""Delivery rules: addresses, retry schedule, SMTP verdicts."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, quote_plus

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from libs.common.settings import ConfigError, load_settings
from services.mailer.app import warn_of_a_local_sender
from services.mailer.domain import (
    FailureReason,
    InvalidAddress,
    RetryPolicy,
    RetryReason,
    Verdict,
    abandoned,
    after_failure,
    clip_error,
    judge_smtp_code,
    next_attempt_at,
    normalise_address,
    retry_delay,
    retry_reason,
    without_links,
)
from services.mailer.handlers import Deps
from services.mailer.sender import Sender
from services.mailer.settings import MailerSettings


def test_address_is_stripped_and_domain_lower_cased() -> None:
    assert normalise_address("  Client.Name@Example.COM ") == "Client.Name@example.com"


@pytest.mark.parametrize(
    "raw",
    [
        "a@example.com\r\nBcc: victim@example.com",
        "a@example.com\nX: y",
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "Client <a@example.com>",
        '"Client" a@example.com',
        "not-an-address",
        "",
        "a@",
    ],
)
def test_unusable_addresses_are_refused(raw: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise_address(raw)


SHIPPED = RetryPolicy(base_seconds=2.0)  # the defaults: cap one hour, horizon two days
QUEUED = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_retry_delay_grows_exponentially_between_the_base_and_the_step() -> None:
    low = [retry_delay(n, SHIPPED, rand=lambda: 0.0) for n in range(1, 6)]
    high = [retry_delay(n, SHIPPED, rand=lambda: 1.0) for n in range(1, 6)]
    assert high == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert low == [2.0] * 5, "full jitter: any delay from the base up to the step"


def test_retry_delay_is_capped_at_an_hour_by_default() -> None:
    assert SHIPPED.max_seconds == 3600 and SHIPPED.give_up_after_seconds == 2 * 86_400
    assert retry_delay(12, SHIPPED, rand=lambda: 1.0) == 3600
    assert retry_delay(10_000, SHIPPED, rand=lambda: 1.0) == 3600
    short = RetryPolicy(base_seconds=2.0, max_seconds=60)
    assert retry_delay(30, short, rand=lambda: 1.0) == 60
    assert retry_delay(30, RetryPolicy(base_seconds=5, max_seconds=1), rand=lambda: 0.5) == 1


def test_retry_delays_are_jittered_not_in_lockstep() -> None:
    """A thousand deliveries failed by one outage come back spread over the step."""
    rng = random.Random(13)
    delays = [retry_delay(12, SHIPPED, rand=rng.random) for _ in range(1000)]
    assert all(2.0 <= d <= 3600 for d in delays)
    assert len({round(d) for d in delays}) > 500
    spread = sorted(delays)
    assert spread[100] < 3600 * 0.2 and spread[900] > 3600 * 0.8


def test_an_outage_longer_than_the_old_eight_tries_is_waited_out_for_two_days() -> None:
    """Virtual time: SMTP refuses every try; the schedule is followed to its end."""
    rng = random.Random(4)
    now, attempts, gaps = QUEUED, 0, []
    while True:
        attempts += 1
        if after_failure(Verdict.RETRY, QUEUED, now, SHIPPED) is not None:
            break
        later = next_attempt_at(attempts, QUEUED, now, SHIPPED, rand=rng.random)
        gaps.append((later - now).total_seconds())
        now = later
    assert attempts > 8
    assert now == QUEUED + timedelta(days=2), "the last try falls on the horizon's end"
    assert max(gaps) <= 3600
    assert sum(gaps[:8]) < 600, "early tries come quickly"


def test_no_try_is_planned_past_the_horizon() -> None:
    near_end = QUEUED + timedelta(days=2) - timedelta(seconds=30)
    planned = next_attempt_at(20, QUEUED, near_end, SHIPPED, rand=lambda: 1.0)
    assert planned == QUEUED + timedelta(days=2)


def test_when_to_give_up() -> None:
    hour = timedelta(hours=1)
    assert after_failure(Verdict.PERMANENT, QUEUED, QUEUED, SHIPPED) is FailureReason.REJECTED
    assert after_failure(Verdict.RETRY, QUEUED, QUEUED + 47 * hour, SHIPPED) is None
    gave_up = after_failure(Verdict.RETRY, QUEUED, QUEUED + 48 * hour, SHIPPED)
    assert gave_up is FailureReason.RETRIES_EXHAUSTED
    assert gave_up.value == "max_attempts", "the wire value consumers already know"


def test_a_row_left_by_dead_senders_past_its_horizon_is_abandoned() -> None:
    end = QUEUED + timedelta(days=2)
    # The last try is due at the end and claimed a moment later: it is still made.
    assert not abandoned(40, QUEUED, end + timedelta(seconds=5), SHIPPED, 120)
    assert abandoned(40, QUEUED, end + timedelta(seconds=121), SHIPPED, 120)
    # A first try is always made, however late the mailer got to it.
    assert not abandoned(1, QUEUED, end + timedelta(days=1), SHIPPED, 120)


def test_retry_reasons_are_machine_readable() -> None:
    assert retry_reason(451) is RetryReason.DEFERRED
    assert retry_reason(None) is RetryReason.UNREACHABLE


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (550, Verdict.PERMANENT),
        (554, Verdict.PERMANENT),
        (451, Verdict.RETRY),
        (421, Verdict.RETRY),
        (None, Verdict.RETRY),
    ],
)
def test_smtp_codes(code: int | None, verdict: Verdict) -> None:
    assert judge_smtp_code(code) is verdict


def test_errors_are_one_bounded_line() -> None:
    assert clip_error("451 4.3.0\r\n try   later") == "451 4.3.0 try later"
    assert len(clip_error("x" * 5000)) == 500
    # What a server sends is its own: no NUL, no control codes, no bytes that aren't UTF-8.
    assert clip_error("451 try\x00 later\x1b[31m\x85") == "451 try later [31m"
    assert (
        clip_error(
            "554 b\udcffad".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
        )
        == "554 b?ad"
    )


async def test_a_new_job_wakes_one_idle_sender_not_all_of_them() -> None:
    sender = Sender(Deps(db=None, settings=MailerSettings()))  # type: ignore[arg-type]
    events = [asyncio.Event() for _ in range(4)]
    sender._wakes.extend(events)
    sender._idle.extend([events[2], events[0]])  # two waiting, oldest first
    sender.wake_one()
    assert [e.is_set() for e in events] == [False, False, True, False]
    sender.wake_one()
    assert [e.is_set() for e in events] == [True, False, True, False]
    # Nobody idle: a busy sender is told to look again when its send is done.
    sender.wake_one()
    assert sum(e.is_set() for e in events) == 3
    sender.wake()  # retries, recovery, stopping: everyone
    assert all(e.is_set() for e in events)


def test_an_old_configuration_still_loads_and_the_horizon_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_MAX_ATTEMPTS", "8")
    monkeypatch.setenv("MAILER_RETRY_MAX_SECONDS", "600")
    policy = MailerSettings().retry_policy
    assert policy == RetryPolicy(base_seconds=2.0, max_seconds=600, give_up_after_seconds=172_800)


@pytest.mark.parametrize(
    "value",
    [
        "not an address",
        "ClientPress <no-reply@example.com>, someone@example.net",
        "no-reply@example.com\r\nBcc: someone@example.net",
    ],
)
def test_mail_from_must_be_one_address(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A second address was dropped without a word: emails went out from the first only."""
    monkeypatch.setenv("MAIL_FROM", value)
    with pytest.raises(ConfigError, match=r"MAIL_FROM: .*must be one address"):
        load_settings(MailerSettings)


def test_mail_from_with_a_display_name_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_FROM", '"Northwind, Agency" <no-reply@example.com>')
    assert load_settings(MailerSettings).mail_from == '"Northwind, Agency" <no-reply@example.com>'


def test_mail_from_at_an_internationalised_domain_is_written_in_its_ascii_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A From header, Message-ID and envelope any SMTP server takes (the domain as IDNA);
    the display name stays as written (an RFC 2047 word in the header)."""
    monkeypatch.setenv("MAIL_FROM", "Bücher Büro <no-reply@Bücher.example>")
    assert load_settings(MailerSettings).mail_from == "Bücher Büro <no-reply@xn--bcher-kva.example>"


def test_mail_from_with_a_local_part_only_smtputf8_carries_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAIL_FROM", "ClientPress <büro@example.com>")
    with pytest.raises(ConfigError, match=r"MAIL_FROM: .*must be ASCII before the @"):
        load_settings(MailerSettings)


@pytest.mark.parametrize(
    ("mail_from", "public_url", "warned"),
    [
        ("ClientPress <no-reply@localhost>", "https://portal.agency.example", True),
        ("ClientPress <no-reply@mailer>", "https://portal.agency.example", True),
        ("ClientPress <no-reply@localhost>", "http://localhost:8080", False),
        ("ClientPress <no-reply@agency.example>", "https://portal.agency.example", False),
    ],
)
def test_a_sender_at_this_machine_on_a_public_site_is_warned_of_at_start(
    mail_from: str, public_url: str, warned: bool
) -> None:
    settings = MailerSettings(mail_from=mail_from, public_url=public_url)
    with capture_logs() as logs:
        warn_of_a_local_sender(settings)  # create_app calls it first
    warnings = [e for e in logs if e["event"] == "mail_from_not_public"]
    assert len(warnings) == warned
    if warned:
        assert "no-reply@portal.agency.example" in warnings[0]["problem"]


def test_a_servers_answer_loses_every_form_of_the_jobs_links() -> None:
    token = "Zm9vYmFyYmF6cXV4LXNlY3JldC10b2tlbg"
    link = f"https://portal.example.com/invitations/accept?token={token}"
    answer = (
        f"554 refused {link}; url={quote(link, safe='')}; plus={quote_plus(link)};"
        f" token {token}; the site https://portal.example.com/ is fine"
    )
    assert without_links(answer, [link]) == (
        "554 refused [link]; url=[link]; plus=[link]; token [link];"
        " the site https://portal.example.com/ is fine"
    )
    assert without_links("451 try later", []) == "451 try later"


def test_a_stuck_send_is_never_taken_for_a_live_one() -> None:
    """MAILER_STUCK_SENDING_SECONDS at or below a whole send's bound (twice
    MAILER_SMTP_TIMEOUT_SECONDS) let the sweep queue a slow live send again, and the email
    went twice: refused at start, naming both variables."""
    with pytest.raises(ValidationError) as refused:
        MailerSettings(mailer_smtp_timeout_seconds=30, mailer_stuck_sending_seconds=60)
    assert "MAILER_STUCK_SENDING_SECONDS must be more than 60 s" in str(refused.value)
    assert "MAILER_SMTP_TIMEOUT_SECONDS" in str(refused.value)
    assert (
        MailerSettings(
            mailer_smtp_timeout_seconds=30, mailer_stuck_sending_seconds=61
        ).mailer_stuck_sending_seconds
        == 61
    )
