"""One reusable SMTP connection (aiosmtplib) per sender worker, over TLS as SMTP_TLS
says, and SMTP errors turned into one ``SendError`` carrying the reply code (None when the
server never answered)."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiosmtplib

from .rendering import Email
from .settings import SEND_TIMEOUTS, MailerSettings, SmtpTls

# Servers drop idle clients after a while; past this, open a fresh connection instead of
# discovering the drop mid-send.
MAX_IDLE_SECONDS = 60.0


class SendError(Exception):
    """The server's words, as it said them (the sender takes the job's links out, then
    clips them: domain.without_links, clip_error), and its reply code."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.code = code


# RFC 8314: submission over implicit TLS. STARTTLS there can never work.
SMTPS_PORT = 465


def connection_security(settings: MailerSettings) -> SmtpTls:
    """SMTP_TLS as it applies: ``true`` on port 465 means TLS from the first byte."""
    if settings.smtp_tls is SmtpTls.STARTTLS and settings.smtp_port == SMTPS_PORT:
        return SmtpTls.IMPLICIT
    return settings.smtp_tls


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an error (aiosmtplib wraps it on implicit TLS)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__
    return None


class SmtpTransport:
    def __init__(self, settings: MailerSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def send(self, message: Email) -> None:
        """Within SEND_TIMEOUTS timeouts in all: aiosmtplib's timeout bounds each read, and
        a server answering every command just inside it (six of them for one email, more
        with STARTTLS and a login) kept a send going past MAILER_STUCK_SENDING_SECONDS,
        whose sweep then sent the email again (tests/faults/test_smtp_slow.py)."""
        bound = SEND_TIMEOUTS * self.settings.mailer_smtp_timeout_seconds
        try:
            async with asyncio.timeout(bound):
                await self._send_once(message)
        except TimeoutError:
            # Mid-conversation: the connection can't be used again.
            client, self._client = self._client, None
            if client is not None:
                client.close()
            raise SendError(
                None,
                f"the SMTP server at {self._server} took longer than {bound:g} s over one"
                f" email ({SEND_TIMEOUTS} times MAILER_SMTP_TIMEOUT_SECONDS)",
            ) from None

    async def _send_once(self, message: Email) -> None:
        try:
            reused = await self._connect()
            try:
                await self._send(message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                if not reused:
                    raise
                # The server dropped a connection we kept open: one more go on a fresh one.
                await self.close()
                await self._connect()
                await self._send(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self.close()
            first = exc.recipients[0] if exc.recipients else None
            raise SendError(
                first.code if first else None,
                f"{first.code} {first.message}" if first else "recipient refused",
            ) from None
        except (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError) as exc:
            # Turned away before any email was named (the greeting, EHLO): a verdict on this
            # client, not the email, so retried, as Postfix does (smtp_skip_5xx_greeting).
            await self.close()
            raise SendError(None, f"server turned us away: {exc.code} {exc.message}") from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Our credentials, not the recipient: worth retrying once someone fixes them.
            await self.close()
            raise SendError(None, f"authentication failed: {exc.code} {exc.message}") from None
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            raise SendError(exc.code, f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise SendError(None, self._explain(exc)) from None

    def _explain(self, exc: Exception) -> str:
        """What went wrong, for an operator: the server and the variable to look at."""
        security = connection_security(self.settings)
        failure = _tls_failure(exc)
        if isinstance(failure, ssl.SSLCertVerificationError):
            return (
                f"the TLS certificate of {self._server} was not accepted:"
                f" {failure.verify_message or failure.reason}"
                " (a server whose certificate a private CA signs: MAILER_SMTP_CA_FILE)"
            )
        if failure is not None and security is SmtpTls.IMPLICIT:
            return (
                f"the SMTP server at {self._server} did not answer in TLS ({failure.reason}):"
                " SMTP_TLS=implicit is for a port that speaks TLS from the first byte (465);"
                " for one that offers STARTTLS (587, 25), SMTP_TLS=true"
            )
        if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError) and security is SmtpTls.STARTTLS:
            return (
                f"{type(exc).__name__}: {exc} from {self._server} (a server that speaks TLS"
                " from the first byte sends nothing before it: SMTP_TLS=implicit)"
            )
        return f"{type(exc).__name__}: {exc}"

    @property
    def _server(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    async def _send(self, message: Email) -> None:
        client = self._client
        assert client is not None
        options = []
        if message.utf8:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()  # what the server supports
            if client.supports_extension("smtputf8"):
                options.append("SMTPUTF8")
            else:
                # An internationalised domain has an ASCII form any server takes.
                ascii_message = message.in_ascii()
                if ascii_message is None:
                    raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
                message = ascii_message
        await client.sendmail(message.sender, [message.to], message.data, mail_options=options)
        self._last_used = time.monotonic()

    async def _connect(self) -> bool:
        """Returns True when an open connection is being reused."""
        if self._client is not None and self._client.is_connected:
            if time.monotonic() - self._last_used < MAX_IDLE_SECONDS:
                return True
            await self.close()
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        login = (s.smtp_username, password) if s.smtp_username is not None and password else None
        security = connection_security(s)
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=security is SmtpTls.IMPLICIT,
            # SMTP_TLS=false: a password still goes only over STARTTLS when the server offers
            # it (aiosmtplib's None); without one, or with plaintext logins allowed, plain
            # SMTP as ever. A required STARTTLS is asked for below, whose refusal names the
            # server and the setting.
            start_tls=(
                None
                if security is SmtpTls.OFF and login and not s.mailer_smtp_allow_plaintext_auth
                else False
            ),
            cert_bundle=str(s.mailer_smtp_ca_file) if s.mailer_smtp_ca_file else None,
            timeout=s.mailer_smtp_timeout_seconds,
        )
        await client.connect()
        try:
            if security is SmtpTls.STARTTLS:
                await self._require_starttls(client)
            if login is not None:
                await self._log_in(client, *login)
        except BaseException:
            client.close()
            raise
        self._client = client
        self._last_used = time.monotonic()
        return False

    async def _require_starttls(self, client: aiosmtplib.SMTP) -> None:
        await client.ehlo()
        if not client.supports_extension("starttls"):
            raise SendError(
                None,
                f"the SMTP server at {self._server} does not offer STARTTLS, which SMTP_TLS=true"
                " requires (SMTP_TLS=implicit for a server that speaks TLS from the first byte)",
            )
        await client.starttls()

    async def _log_in(self, client: aiosmtplib.SMTP, username: str, password: str) -> None:
        encrypted = client.get_transport_info("sslcontext") is not None
        if not encrypted and not self.settings.mailer_smtp_allow_plaintext_auth:
            raise SendError(
                None,
                f"the SMTP server at {self._server} offers no STARTTLS, and SMTP_PASSWORD is"
                " not sent unencrypted: SMTP_TLS=implicit for a server that speaks TLS from"
                " the first byte, or MAILER_SMTP_ALLOW_PLAINTEXT_AUTH=true for one on a"
                " trusted network",
            )
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        if not client.supports_extension("auth"):
            raise SendError(
                None,
                f"the SMTP server at {self._server} offers no AUTH"
                f"{'' if encrypted else ' without TLS'}, and SMTP_USERNAME is set"
                " (empty it for a server that takes mail without a login)",
            )
        await client.login(username, password)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
