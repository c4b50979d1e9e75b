"""Delivery rules: addresses, retry schedule, SMTP verdicts."""

from __future__ import annotations

import asyncio

import pytest

from services.mailer.domain import (
    MAX_RETRY_DELAY_SECONDS,
    FailureReason,
    InvalidAddress,
    Verdict,
    after_failure,
    clip_error,
    judge_smtp_code,
    normalise_address,
    retry_delay,
)
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


def test_retry_delay_grows_exponentially_with_jitter() -> None:
    low = [retry_delay(n, 2.0, rand=lambda: 0.0) for n in range(1, 5)]
    high = [retry_delay(n, 2.0, rand=lambda: 1.0) for n in range(1, 5)]
    assert high == [2.0, 4.0, 8.0, 16.0]
    assert low == [1.0, 2.0, 4.0, 8.0]


def test_retry_delay_is_capped_at_ten_minutes() -> None:
    assert retry_delay(50, 2.0, rand=lambda: 1.0) == MAX_RETRY_DELAY_SECONDS
    assert retry_delay(10_000, 2.0, rand=lambda: 1.0) == MAX_RETRY_DELAY_SECONDS


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


def test_when_to_give_up() -> None:
    assert after_failure(1, 8, Verdict.PERMANENT) is FailureReason.REJECTED
    assert after_failure(7, 8, Verdict.RETRY) is None
    assert after_failure(8, 8, Verdict.RETRY) is FailureReason.MAX_ATTEMPTS


def test_errors_are_one_bounded_line() -> None:
    assert clip_error("451 4.3.0\r\n try   later") == "451 4.3.0 try later"
    assert len(clip_error("x" * 5000)) == 500


async def test_a_new_job_wakes_one_idle_sender_not_all_of_them() -> None:
    sender = Sender(None, MailerSettings())  # type: ignore[arg-type]
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
