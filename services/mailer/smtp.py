"""One reusable SMTP connection (aiosmtplib) per sender worker, and SMTP errors turned
into one ``SendError`` carrying the reply code (None when the server never answered)."""

from __future__ import annotations

import time

import aiosmtplib

from .domain import clip_error
from .rendering import Email
from .settings import MailerSettings

# Servers drop idle clients after a while; past this, open a fresh connection instead of
# discovering the drop mid-send.
MAX_IDLE_SECONDS = 60.0


class SendError(Exception):
    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = clip_error(detail)


class SmtpTransport:
    def __init__(self, settings: MailerSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def send(self, message: Email) -> None:
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
            raise SendError(None, f"{type(exc).__name__}: {exc}") from None

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
        credentials = s.smtp_username is not None and password is not None
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username if credentials else None,
            password=password if credentials else None,
            start_tls=s.smtp_tls,
            timeout=s.mailer_smtp_timeout_seconds,
        )
        await client.connect()
        self._client = client
        self._last_used = time.monotonic()
        return False

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
