"""``python -m services.mailer`` as a real process: migrate, serve, send, stop cleanly."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from libs.common.bus import Bus
from tests.mailer.conftest import invitation_job, publish_job
from tests.support.env import TestEnv, free_port
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.smtp import SmtpSink, accept_link

pytestmark = pytest.mark.e2e


async def test_the_mailer_process_sends_and_stops_cleanly(
    migrated_schemas: TestEnv, publisher: Bus, smtp_sink: SmtpSink
) -> None:
    env = migrated_schemas.service_env(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_sink.port),
        MAILER_RETRY_BASE_SECONDS="0.05",
    )
    await asyncio.to_thread(run_migrations, env, ("mailer",))
    service = ServiceProcess("mailer", free_port(), env)
    service.start()
    try:
        await service.wait_ready()
        job, _ = invitation_job("process-client@example.com")
        await publish_job(publisher, job)
        [msg] = await smtp_sink.sink.wait_for("process-client@example.com")
        assert accept_link(msg) == job.context["accept_url"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(service.management_url + "/metrics") as response,
        ):
            assert "clientpress_emails_sent_total" in await response.text()
    finally:
        code = await asyncio.to_thread(service.stop)
    assert code == 0, service.log_tail()
    log = service.log_path.read_text()
    assert job.context["accept_url"] not in log
    assert job.context["accept_url"].split("token=")[1] not in log
