"""The mailer and real SMTP servers over TLS: STARTTLS and implicit TLS ("SMTPS"), the
server's certificate checked (a private CA through MAILER_SMTP_CA_FILE), and the SMTP
password never sent unencrypted unless an operator says so."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from libs.common.bus import Bus
from services.mailer.settings import MailerSettings, SmtpTls
from services.mailer.smtp import connection_security
from tests.mailer.conftest import StartMailer, invitation_job, publish_job, wait_for_row
from tests.support.env import free_port
from tests.support.smtp import Sink
from tests.support.tls import ServerCertificate, make_certificate

pytestmark = pytest.mark.integration

# The servers below take a password without TLS on purpose: what the mailer sends is the test.
pytestmark_auth = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning"
)

CREDENTIALS = {"smtp_username": "mailer", "smtp_password": SecretStr("s3cret-pass")}


class Logins:
    """An aiosmtpd authenticator that notes each login and whether it came over TLS."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bool]] = []

    @property
    def all_over_tls(self) -> bool:
        """Each worker logs in on its own connection: one login or several, all encrypted."""
        return bool(self.seen) and all(tls for _, tls in self.seen)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        encrypted = server.transport.get_extra_info("sslcontext") is not None
        self.seen.append((data.password, encrypted))
        ok = data.login == b"mailer" and data.password == b"s3cret-pass"
        # handled=False: aiosmtpd answers the refusal (535) itself; its default, True, leaves
        # the client waiting for an answer.
        return AuthResult(success=ok, handled=ok)


@pytest.fixture
def start_mailer(start_mailer: StartMailer) -> StartMailer:
    """Every test here judges the first try. At the mailer tests' pace a retry came 50 ms
    later and could claim the row again before the test read it: on a loaded machine the
    test read 'sending' and the next try's error. Here a retry waits a minute."""

    def start(smtp_port: int, **overrides: Any) -> Awaitable[Any]:
        return start_mailer(smtp_port, **{"mailer_retry_base_seconds": 60.0, **overrides})

    return start


@pytest.fixture(autouse=True)
async def _no_email_left_waiting(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """These tests leave emails retrying; the next test's mailer, with a server of its own,
    would send them. Dropped once this test's mailer has stopped."""
    yield
    await pool.execute("DELETE FROM deliveries WHERE status IN ('queued', 'sending')")


@pytest.fixture
def certificate(tmp_path: Path) -> ServerCertificate:
    return make_certificate(tmp_path / "good")


class NoAuthSink(Sink):
    """A server that offers no AUTH at all (aiosmtpd always offers it after STARTTLS)."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Sink, int]]]:
    controllers: list[Controller] = []

    def start(sink: Sink | None = None, **options: Any) -> tuple[Sink, int]:
        sink = sink or Sink()
        controller = Controller(sink, hostname="127.0.0.1", port=free_port(), **options)
        controller.start()
        controllers.append(controller)
        return sink, controller.port

    yield start
    for controller in controllers:
        controller.stop()


async def _send_one(publisher: Bus, pool: asyncpg.Pool, name: str) -> tuple[str, asyncpg.Record]:
    """One invitation email to a new address: the address, and its delivery once it was sent
    or its first try failed."""
    to = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    job = invitation_job(to)[0]
    await publish_job(publisher, job)
    row = await wait_for_row(
        pool, job.mail_id, lambda r: r["status"] == "sent" or r["last_error"] is not None
    )
    return to, row


@pytestmark_auth
async def test_the_password_goes_over_starttls_when_the_server_offers_it(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    certificate: ServerCertificate,
) -> None:
    """SMTP_TLS=false (the default) with SMTP_USERNAME and SMTP_PASSWORD: the mailer used to
    turn STARTTLS off and log in in clear, though the server offered it."""
    logins = Logins()
    sink, port = smtp_server(
        tls_context=certificate.server_context(),
        authenticator=logins,
        auth_required=True,
        auth_require_tls=False,
    )
    await start_mailer(port, mailer_smtp_ca_file=certificate.ca_file, **CREDENTIALS)
    _, row = await _send_one(publisher, pool, "starttls")
    assert row["status"] == "sent", row["last_error"]
    assert logins.all_over_tls, logins.seen


@pytestmark_auth
async def test_the_password_is_not_sent_to_a_server_without_tls(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
) -> None:
    """The email waits (retried, not failed) with a reason an operator can act on."""
    logins = Logins()
    sink, port = smtp_server(authenticator=logins, auth_required=True, auth_require_tls=False)
    await start_mailer(port, mailer_concurrency=1, **CREDENTIALS)
    _, row = await _send_one(publisher, pool, "clear")
    assert row["status"] == "queued", row
    assert "offers no STARTTLS" in row["last_error"]
    assert "MAILER_SMTP_ALLOW_PLAINTEXT_AUTH" in row["last_error"]
    assert logins.seen == []
    assert sink.messages == []


@pytestmark_auth
async def test_implicit_tls_smtps(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    certificate: ServerCertificate,
) -> None:
    """A server that speaks TLS from the first byte (port 465: SES, Gmail, most providers).
    With SMTP_TLS=true the mailer waited for a greeting that never came, then timed out."""
    logins = Logins()
    # aiosmtpd offers AUTH on implicit TLS only with auth_require_tls off (it knows of
    # STARTTLS alone); the server speaks nothing but TLS.
    sink, port = smtp_server(
        ssl_context=certificate.server_context(),
        authenticator=logins,
        auth_required=True,
        auth_require_tls=False,
    )
    await start_mailer(
        port, smtp_tls="implicit", mailer_smtp_ca_file=certificate.ca_file, **CREDENTIALS
    )
    to, row = await _send_one(publisher, pool, "smtps")
    assert row["status"] == "sent", row["last_error"]
    assert logins.all_over_tls, logins.seen
    assert len(sink.to(to)) == 1


async def test_starttls_required_but_not_offered(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
) -> None:
    sink, port = smtp_server()
    await start_mailer(port, mailer_concurrency=1, smtp_tls=True)
    _, row = await _send_one(publisher, pool, "nostarttls")
    assert row["status"] == "queued", row
    assert f"127.0.0.1:{port} does not offer STARTTLS" in row["last_error"]
    assert "SMTP_TLS" in row["last_error"]
    assert sink.messages == []


@pytest.mark.parametrize(
    ("hosts", "expired", "trusted", "reason"),
    [
        (("127.0.0.1",), False, False, "unable to get local issuer certificate"),
        (("mail.example.com",), False, True, "certificate is not valid for '127.0.0.1'"),
        (("127.0.0.1",), True, True, "certificate has expired"),
    ],
    ids=["unknown-ca", "other-host", "expired"],
)
async def test_a_certificate_not_accepted_keeps_the_email_for_later(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    tmp_path: Path,
    hosts: tuple[str, ...],
    expired: bool,
    trusted: bool,
    reason: str,
) -> None:
    bad = make_certificate(tmp_path / "bad", hosts, expired=expired)
    sink, port = smtp_server(tls_context=bad.server_context())
    await start_mailer(
        port,
        mailer_concurrency=1,
        smtp_tls=True,
        mailer_smtp_ca_file=bad.ca_file if trusted else None,
    )
    _, row = await _send_one(publisher, pool, "cert")
    assert row["status"] == "queued", row
    assert f"TLS certificate of 127.0.0.1:{port} was not accepted: " in row["last_error"]
    assert reason in row["last_error"]
    assert "MAILER_SMTP_CA_FILE" in row["last_error"]
    assert sink.messages == []


async def test_wrong_credentials_keep_the_email_for_later(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    certificate: ServerCertificate,
) -> None:
    logins = Logins()
    sink, port = smtp_server(
        tls_context=certificate.server_context(), authenticator=logins, auth_required=True
    )
    await start_mailer(
        port,
        smtp_tls=True,
        mailer_smtp_ca_file=certificate.ca_file,
        smtp_username="mailer",
        smtp_password=SecretStr("wrong"),
    )
    _, row = await _send_one(publisher, pool, "badpass")
    assert row["status"] == "queued", row
    assert "authentication failed: 535" in row["last_error"]
    assert "wrong" not in row["last_error"]


async def test_no_auth_offered_while_a_login_is_configured(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    certificate: ServerCertificate,
) -> None:
    sink, port = smtp_server(NoAuthSink(), tls_context=certificate.server_context())
    await start_mailer(port, smtp_tls=True, mailer_smtp_ca_file=certificate.ca_file, **CREDENTIALS)
    _, row = await _send_one(publisher, pool, "noauth")
    assert row["status"] == "queued", row
    assert f"127.0.0.1:{port} offers no AUTH" in row["last_error"]
    assert "SMTP_USERNAME" in row["last_error"]


@pytest.mark.parametrize(
    ("value", "port", "expected"),
    [
        ("false", 25, SmtpTls.OFF),
        ("0", 25, SmtpTls.OFF),
        ("", 25, SmtpTls.OFF),
        ("true", 587, SmtpTls.STARTTLS),
        ("yes", 587, SmtpTls.STARTTLS),
        ("starttls", 587, SmtpTls.STARTTLS),
        ("implicit", 2465, SmtpTls.IMPLICIT),
        # RFC 8314: port 465 is TLS from the first byte; STARTTLS there can never work.
        ("true", 465, SmtpTls.IMPLICIT),
    ],
)
def test_smtp_tls_values(
    monkeypatch: pytest.MonkeyPatch, value: str, port: int, expected: SmtpTls
) -> None:
    monkeypatch.setenv("SMTP_TLS", value)
    monkeypatch.setenv("SMTP_PORT", str(port))
    assert connection_security(MailerSettings()) is expected


def test_smtp_tls_refuses_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_TLS", "ssl3")
    with pytest.raises(ValueError, match=r"false, true .* or implicit"):
        MailerSettings()


def test_a_ca_file_that_is_not_one_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    monkeypatch.setenv("MAILER_SMTP_CA_FILE", str(not_pem))
    with pytest.raises(ValueError, match="PEM"):
        MailerSettings()


@pytestmark_auth
async def test_plaintext_auth_allowed_is_plain_smtp_as_before(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    tmp_path: Path,
) -> None:
    """MAILER_SMTP_ALLOW_PLAINTEXT_AUTH=true is the way back to the old SMTP_TLS=false: no
    STARTTLS asked for, so a relay offering it with a certificate nobody can check (Postfix's
    self-signed default) still takes the login and the email."""
    unchecked = make_certificate(tmp_path / "snakeoil", ("relay.internal",))
    logins = Logins()
    sink, port = smtp_server(
        tls_context=unchecked.server_context(),
        authenticator=logins,
        auth_required=True,
        auth_require_tls=False,
    )
    await start_mailer(port, mailer_smtp_allow_plaintext_auth=True, **CREDENTIALS)
    _, row = await _send_one(publisher, pool, "asbefore")
    assert row["status"] == "sent", row["last_error"]
    assert logins.seen and not any(tls for _, tls in logins.seen)


async def test_implicit_tls_against_a_starttls_port_says_so(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
) -> None:
    sink, port = smtp_server()
    await start_mailer(port, mailer_concurrency=1, smtp_tls="implicit")
    _, row = await _send_one(publisher, pool, "implicit")
    assert row["status"] == "queued", row
    assert f"127.0.0.1:{port} did not answer in TLS" in row["last_error"]
    assert "SMTP_TLS=true" in row["last_error"]


async def test_starttls_against_an_implicit_tls_port_says_so(
    start_mailer: StartMailer,
    publisher: Bus,
    pool: asyncpg.Pool,
    smtp_server: Callable[..., tuple[Sink, int]],
    certificate: ServerCertificate,
) -> None:
    """The server waits for a TLS handshake, the mailer for a greeting: no answer until the
    timeout (short here), which now says what may be wrong."""
    sink, port = smtp_server(ssl_context=certificate.server_context())
    await start_mailer(port, mailer_concurrency=1, smtp_tls=True, mailer_smtp_timeout_seconds=0.5)
    _, row = await _send_one(publisher, pool, "starttls")
    assert row["status"] == "queued", row
    assert "SMTP_TLS=implicit" in row["last_error"]
