"""The SMTP side: one connection reused per worker, and credentials honoured."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from libs.common.bus import Bus
from tests.mailer.conftest import StartMailer, invitation_job, publish_job, wait_for_row
from tests.support.env import free_port
from tests.support.smtp import Sink

pytestmark = pytest.mark.integration

PoolFactory = Callable[[str], Any]


class CountingSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.greetings = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.greetings += 1
        session.host_name = hostname
        return responses


async def test_one_worker_reuses_its_smtp_connection(
    start_mailer: StartMailer, publisher: Bus, pool_factory: PoolFactory
) -> None:
    pool: asyncpg.Pool = await pool_factory("mailer")
    sink = CountingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        await start_mailer(controller.port, mailer_concurrency=1)
        to = f"reuse-{uuid.uuid4().hex[:8]}@example.com"
        jobs = [invitation_job(to)[0] for _ in range(5)]
        for job in jobs:
            await publish_job(publisher, job)
        await sink.wait_for(to, count=5)
        for job in jobs:
            await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
        assert sink.greetings == 1
    finally:
        controller.stop()


# Plain AUTH without TLS is fine against a local test server.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_credentials_are_used(
    start_mailer: StartMailer, publisher: Bus, pool_factory: PoolFactory
) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        seen.append((data.login, data.password))
        ok = data.login == b"mailer" and data.password == b"s3cret-pass"
        return AuthResult(success=ok)

    sink = Sink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        await start_mailer(
            controller.port, smtp_username="mailer", smtp_password=SecretStr("s3cret-pass")
        )
        to = f"auth-{uuid.uuid4().hex[:8]}@example.com"
        job, _ = invitation_job(to)
        await publish_job(publisher, job)
        await sink.wait_for(to)
        assert (b"mailer", b"s3cret-pass") in seen
    finally:
        controller.stop()
