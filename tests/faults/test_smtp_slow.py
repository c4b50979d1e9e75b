"""An SMTP server that answers every command late, each answer just inside the mailer's
per-read timeout (tests/support/proxy.py ``SlowReplies`` between the mailer and the
sink): an overloaded relay, or one that slows every client down on purpose. No single
read times out, so only a bound on the whole conversation keeps a send shorter than
``MAILER_STUCK_SENDING_SECONDS``, after which the row is taken for a crashed sender's
and sent again while the first send is still under way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    deliveries_settled,
    per_address,
    record,
    unique_emails,
)
from tests.support.proxy import SlowReplies
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, db_fetch, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SMTP_TIMEOUT = 2.0
# Above two SMTP timeouts (connect, then one message), as settings.py asks.
STUCK_SENDING = 6.0
# Each answer waits this long: every read is within SMTP_TIMEOUT, the six of a plain
# conversation (greeting, EHLO, MAIL, RCPT, DATA, the end of the body) are not within
# STUCK_SENDING.
REPLY_DELAY = 1.8
SLOW_FOR = 16.0


@pytest.fixture(scope="module")
async def slow(sink: SmtpSink) -> AsyncIterator[SlowReplies]:
    proxy = SlowReplies("127.0.0.1", sink.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink, slow: SlowReplies) -> AsyncIterator[Stack]:
    async with running_stack(
        sink,
        SMTP_PORT=str(slow.port),
        MAILER_SMTP_TIMEOUT_SECONDS=str(SMTP_TIMEOUT),
        MAILER_STUCK_SENDING_SECONDS=str(STUCK_SENDING),
    ) as running:
        yield running


async def test_a_server_slow_on_every_answer_gets_each_email_once(
    stack: Stack, slow: SlowReplies
) -> None:
    """Every answer late, none past the per-read timeout: each send is cut off at the
    bound on a conversation and retried (never left in 'sending' past
    MAILER_STUCK_SENDING_SECONDS, so never sent a second time by the stuck-row sweep);
    once the server answers promptly each email goes once."""
    api = Api(stack)
    try:
        portal = await api.create_portal("Slow SMTP")
        emails = unique_emails("smtp-slow", 2)
        slow.delay = REPLY_DELAY
        started = time.monotonic()
        for email in emails:
            await api.invite(portal["id"], email)
        await asyncio.sleep(SLOW_FOR)
        during = per_address(stack, emails)
        slow.delay = 0.0
        back = await all_delivered(stack, emails, timeout=60)
        await deliveries_settled(stack, timeout=60)
        # Sends a sweep started again may still be under way: let them finish.
        await asyncio.sleep(STUCK_SENDING + 6)
        counts = per_address(stack, emails)
        rows = await db_fetch(stack, "SELECT attempts FROM mailer.deliveries ORDER BY attempts")
        log = stack["mailer"].log_path.read_text()
        requeued = log.count("mail_stuck_requeued")
        record(
            "smtp_slow_replies",
            reply_delay=REPLY_DELAY,
            smtp_timeout=SMTP_TIMEOUT,
            stuck_sending=STUCK_SENDING,
            sent_while_slow=dict(during),
            seconds_to_delivered_after=back,
            seconds_total=round(time.monotonic() - started, 1),
            copies=dict(counts),
            attempts=[r["attempts"] for r in rows],
            cut_off=log.count("took longer than"),
            stuck_requeued_lines=requeued,
        )
        assert counts == {email.lower(): 1 for email in emails}, counts
        assert requeued == 0
    finally:
        slow.delay = 0.0
        await api.close()
