"""The SMTP side: one connection reused per worker, and credentials honoured."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from libs.common.bus import Bus
from tests.mailer.conftest import (
    StartMailer,
    invitation_job,
    outbox_events,
    publish_job,
    wait_for_row,
)
from tests.support.env import free_port
from tests.support.smtp import Sink

pytestmark = pytest.mark.integration


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
    start_mailer: StartMailer, publisher: Bus, pool: asyncpg.Pool
) -> None:
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


# Plain AUTH without TLS, allowed by MAILER_SMTP_ALLOW_PLAINTEXT_AUTH for a local test
# server (tests/mailer/test_smtp_tls.py: the password over TLS, and refused without it).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_credentials_are_used(start_mailer: StartMailer, publisher: Bus) -> None:
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
            controller.port,
            smtp_username="mailer",
            smtp_password=SecretStr("s3cret-pass"),
            mailer_smtp_allow_plaintext_auth=True,
        )
        to = f"auth-{uuid.uuid4().hex[:8]}@example.com"
        job, _ = invitation_job(to)
        await publish_job(publisher, job)
        await sink.wait_for(to)
        assert (b"mailer", b"s3cret-pass") in seen
    finally:
        controller.stop()


class EnvelopeSink:
    """Keeps each envelope as it came: the recipients, the MAIL options, the bytes."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def envelope_sink() -> Iterator[Callable[[bool], tuple[EnvelopeSink, int]]]:
    """An SMTP server that offers SMTPUTF8 or not: its sink and its port."""
    controllers: list[Controller] = []

    def start(smtputf8: bool) -> tuple[EnvelopeSink, int]:
        sink = EnvelopeSink()
        controller = Controller(
            sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=smtputf8
        )
        controller.start()
        controllers.append(controller)
        return sink, controller.port

    yield start
    for controller in controllers:
        controller.stop()


async def test_an_internationalised_address_goes_out_under_smtputf8_as_it_is(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    envelope_sink: Callable[[bool], tuple[EnvelopeSink, int]],
) -> None:
    """RFC 6531/6532: the envelope asks for SMTPUTF8 and the To header carries the address
    in UTF-8. The stdlib's generator used to write it as an RFC 2047 word there."""
    sink, port = envelope_sink(True)
    await start_mailer(port, mailer_concurrency=1)
    to = f"jürgen-{uuid.uuid4().hex[:8]}@exämple.de"
    job = invitation_job(to)[0]
    await publish_job(publisher, job)
    await wait_for_row(pool, job.mail_id, lambda r: r["status"] == "sent")
    (envelope,) = sink.envelopes
    assert envelope.rcpt_tos == [to]
    assert "SMTPUTF8" in [option.upper() for option in envelope.mail_options]
    message = email.message_from_string(
        envelope.content.decode("utf-8"), policy=email.policy.default
    )
    assert message["To"].addresses[0].addr_spec == to


async def test_an_internationalised_domain_goes_out_in_its_ascii_form_without_smtputf8(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    envelope_sink: Callable[[bool], tuple[EnvelopeSink, int]],
) -> None:
    """Only the local part needs SMTPUTF8: a server without it (Postfix's smtp-sink, many
    relays) takes an internationalised domain in its IDNA form, which the mailer used to
    hold back as unreachable for two days."""
    sink, port = envelope_sink(False)
    await start_mailer(port, mailer_concurrency=1)
    local = f"jane-{uuid.uuid4().hex[:8]}"
    job = invitation_job(f"{local}@Bücher.DE")[0]
    await publish_job(publisher, job)
    row = await wait_for_row(
        pool, job.mail_id, lambda r: r["status"] == "sent" or r["last_error"] is not None
    )
    assert row["status"] == "sent", row["last_error"]
    (envelope,) = sink.envelopes
    assert envelope.rcpt_tos == [f"{local}@xn--bcher-kva.de"]
    assert "SMTPUTF8" not in [option.upper() for option in envelope.mail_options]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["To"] == f"{local}@xn--bcher-kva.de"


async def test_an_internationalised_address_waits_for_a_server_with_smtputf8(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    envelope_sink: Callable[[bool], tuple[EnvelopeSink, int]],
) -> None:
    sink, port = envelope_sink(False)
    await start_mailer(port, mailer_concurrency=1)
    job = invitation_job(f"jürgen-{uuid.uuid4().hex[:8]}@exämple.de")[0]
    await publish_job(publisher, job)
    row = await wait_for_row(pool, job.mail_id, lambda r: r["last_error"] is not None)
    assert row["status"] == "queued" and "SMTPUTF8" in row["last_error"]
    assert sink.envelopes == []


async def test_a_server_that_greets_with_5xx_is_retried_not_a_refusal_of_the_email(
    start_mailer: StartMailer, publisher: Bus, pool: asyncpg.Pool
) -> None:
    """554 at the greeting is the server turning us away (an address not allowed to relay, a
    server in maintenance), not a verdict on the email: like Postfix (smtp_skip_5xx_greeting),
    try again later instead of failing every invitation for good."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 Service unavailable; client host blocked\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        await start_mailer(server.sockets[0].getsockname()[1], mailer_concurrency=1)
        job = invitation_job(f"client-{uuid.uuid4().hex[:8]}@example.com")[0]
        await publish_job(publisher, job)
        row = await wait_for_row(pool, job.mail_id, lambda r: r["last_error"] is not None)
        assert row["status"] == "queued", row["last_error"]
        assert "554 5.7.1 Service unavailable" in row["last_error"]
        types = [e["type"] for e in await outbox_events(pool, job.mail_id)]
        assert types and set(types) == {"mail.retrying"}
    finally:
        server.close()
