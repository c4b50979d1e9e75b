"""Issue 9, fault 7: SIGTERM to the gateway, then to the invitations service, while
concurrent clients create invitations through the API. The stopping service finishes
what it holds and exits cleanly; no request breaks midway (the only failures are a
refused connection, or the gateway's 503 while invitations is away, both retried once
the service is back), no invitation is lost and every email goes out once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    burst,
    dead_letters,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BURST = 150


@pytest.mark.parametrize("victim", ["gateway", "invitations"])
async def test_sigterm_under_load(stack: Stack, victim: str) -> None:
    api = Api(stack, keepalive=False)
    try:
        portal = await api.create_portal(f"Graceful {victim}")
        emails = unique_emails(f"term-{victim}", BURST)
        invites = asyncio.create_task(burst(api, portal["id"], emails, concurrency=12))

        async def a_third() -> bool:
            return api.invited >= BURST // 3 or invites.done()

        await wait_until(a_third, 60, "a third of the burst")
        invited_before = api.invited
        stopped_at = time.monotonic()
        code = await asyncio.to_thread(stack[victim].stop, signal.SIGTERM)
        stop_seconds = round(time.monotonic() - stopped_at, 2)
        stack[victim].start()
        await stack[victim].wait_ready()
        await invites
        await all_delivered(stack, emails, timeout=60)
        await outboxes_drained(stack)
        counts = per_address(stack, emails)
        dead = await dead_letters(stack)
        record(
            f"sigterm_{victim}",
            invitations=BURST,
            invited_before_stop=invited_before,
            exit_code=code,
            seconds_to_stop=stop_seconds,
            emails_delivered=sum(counts.values()),
            duplicated=sum(1 for n in counts.values() if n > 1),
            client_retries=dict(api.retries),
            seconds_from_stop_to_last_email=round(time.monotonic() - stopped_at, 2),
        )
        assert code == 0, stack[victim].log_tail()
        # Nothing broke mid-request. The one allowed oddity: a connection the stopping
        # gateway accepted but had not read from yet is closed without an answer
        # (aiohttp closes connections idle at shutdown); the client looks the invitation
        # up and retries, and the exactly-once count below still holds.
        other = {k for k in api.retries if k.startswith("ambiguous:")}
        # A connection the kernel had queued when the listening socket closed is reset
        # before the server reads it (ServerDisconnected, or a reset while writing).
        assert other <= {"ambiguous:ServerDisconnectedError", "ambiguous:ClientOSError"}, (
            api.retries
        )
        if victim == "gateway":
            assert api.retries["503"] == 0, api.retries
        assert len(counts) == BURST and set(counts.values()) == {1}
        assert dead == dict.fromkeys(dead, 0)
    finally:
        await api.close()


@pytest.mark.parametrize("name", ["gateway", "mailer"])
async def test_a_second_signal_while_stopping_changes_nothing(stack: Stack, name: str) -> None:
    """Ctrl-C on `make run` reaches every process of the group, and the supervisor then
    sends SIGTERM too. The second signal used to break into the shutdown the first had
    begun (a service hung in half-closed tasks until it was killed: the mailer, or the
    gateway after serving a page), or, arriving once the shutdown had removed aiohttp's
    handlers, killed the process (-15). Now the first signal stops it, the rest are noted
    (signal_ignored_while_stopping) or, after the loop has closed, ignored."""
    service = stack[name]
    browser = Browser(stack.public_url)
    try:
        status, _, _ = await browser.get("/login")  # a page served, as by make run
        assert status == 200
    finally:
        await browser.close()
    proc = service.proc
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.05)  # as make run's SIGTERM follows the group's SIGINT
    proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    log = service.log_tail()
    service.start()
    await service.wait_ready()
    assert code == 0, log  # old: killed by the late SIGTERM (-15), or hung (None)
    assert "service_stopped" in log, log
