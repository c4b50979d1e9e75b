"""The SMTP relay's certificate expires while invitations go out: the emails wait
(retried, shown as "Retrying — next try at …", the reason in ``last_error`` and the
mailer's log), the mailer stays ready, SMTP_PASSWORD never crosses in clear, and once the
relay has a valid certificate again every email goes out once, without a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.faults.support import (
    Api,
    all_delivered,
    burst,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, db_fetch, running_stack
from tests.support.tls import PrivateCa, ServerCertificate

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PASSWORD = "relay-password-in-test"


class TlsRelay(SmtpSink):
    """A relay that requires STARTTLS before AUTH, with a login, on a private CA's
    certificate that can be swapped while it runs."""

    def __init__(self, certificate: ServerCertificate) -> None:
        super().__init__()
        self.logins: list[tuple[str, bool]] = []
        self.controller = Controller(
            self.sink,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=certificate.server_context(),
            authenticator=self._authenticate,
            auth_required=True,
        )

    def use(self, certificate: ServerCertificate) -> None:
        """The next connections get this certificate (a relay's renewal)."""
        self.controller.SMTP_kwargs["tls_context"] = certificate.server_context()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        encrypted = server.transport.get_extra_info("sslcontext") is not None
        self.logins.append((data.password.decode(), encrypted))
        ok = data.login == b"mailer" and data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=ok)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(Path(tmp_path_factory.mktemp("relay-ca")))


@pytest.fixture(scope="module")
def sink(ca: PrivateCa) -> Iterator[SmtpSink]:
    relay = TlsRelay(ca.issue("expired", expired=True))
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink, ca: PrivateCa) -> AsyncIterator[Stack]:
    async with running_stack(
        sink,
        SMTP_TLS="true",
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD=PASSWORD,
        MAILER_SMTP_CA_FILE=str(ca.ca_file),
        MAILER_RETRY_BASE_SECONDS="0.3",
        MAILER_RETRY_MAX_SECONDS="1",
    ) as running:
        yield running


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    client = Api(stack)
    yield client
    await client.close()


async def test_an_expired_relay_certificate_holds_the_emails_until_it_is_renewed(
    stack: Stack, api: Api, ca: PrivateCa
) -> None:
    relay = stack.sink
    assert isinstance(relay, TlsRelay)
    portal = await api.create_portal("Relay certificate")
    emails = unique_emails("relaycert", 10)
    started = time.monotonic()
    await burst(api, portal["id"], emails)

    async def retried_with_the_reason() -> bool:
        rows = await db_fetch(
            stack,
            "SELECT attempts, status, last_error FROM mailer.deliveries"
            " WHERE lower(to_address) = ANY($1::text[])",
            emails,
        )
        return len(rows) == 10 and all(
            r["status"] != "failed"
            and r["attempts"] >= 3
            and "certificate has expired" in (r["last_error"] or "")
            for r in rows
        )

    await wait_until(retried_with_the_reason, 60, "every email retried 3 times, reason kept")
    (row,) = await db_fetch(
        stack,
        "SELECT last_error FROM mailer.deliveries WHERE lower(to_address) = $1",
        emails[0],
    )
    assert row["last_error"].startswith(
        f"the TLS certificate of 127.0.0.1:{relay.port} was not accepted: certificate has expired"
    ), row
    status, body = await api.call("GET", f"/api/v1/invitations?portal_id={portal['id']}")
    assert status == 200, body
    assert {i["delivery"] for i in body["items"]} == {"retrying"}, body
    assert {i["delivery_error"] for i in body["items"]} == {"smtp_unreachable"}, body
    ready = stack["mailer"].management_url + "/readyz"
    async with aiohttp.ClientSession() as session, session.get(ready) as response:
        assert response.status == 200, await response.text()
    assert "certificate has expired" in stack["mailer"].log_tail(200)
    assert relay.logins == [], "no login before the certificate was accepted"
    assert per_address(stack, emails) == {}

    relay.use(ca.issue("renewed", expired=False))
    renewed = time.monotonic()
    await all_delivered(stack, emails, timeout=30)
    delivered_after = round(time.monotonic() - renewed, 2)
    counts = per_address(stack, emails)

    async def rows_now() -> list[Any]:
        return await db_fetch(
            stack,
            "SELECT attempts, status FROM mailer.deliveries"
            " WHERE lower(to_address) = ANY($1::text[])",
            emails,
        )

    async def recorded_sent() -> bool:
        return all(r["status"] == "sent" for r in await rows_now())

    await wait_until(recorded_sent, 30, "every delivery recorded as sent")
    rows = await rows_now()
    record(
        "smtp_relay_certificate_expired_then_renewed",
        invitations=10,
        emails_delivered=sum(counts.values()),
        duplicated=sum(1 for n in counts.values() if n > 1),
        attempts=f"{min(r['attempts'] for r in rows)}-{max(r['attempts'] for r in rows)}",
        seconds_held=round(renewed - started, 2),
        seconds_from_renewal_to_last_email=delivered_after,
        logins=len(relay.logins),
    )
    assert set(counts.values()) == {1}
    assert relay.logins and all(tls for _, tls in relay.logins), relay.logins
