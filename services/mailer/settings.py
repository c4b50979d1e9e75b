"""Mailer configuration: the public variables plus ``MAILER_…``."""

from __future__ import annotations

import email.utils
import ssl
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from libs.common.email import ascii_address
from libs.common.sealing import WEBHOOK_DEVELOPMENT_KEY, Sealer, sealer_for
from libs.common.settings import CommonSettings, management_port_field, port_field

from .branding.domain import TEXT_CHECKS, Branding, BrandingRefused
from .domain import GIVE_UP_AFTER_SECONDS, RETRY_MAX_SECONDS, RetryPolicy
from .webhooks import domain as webhooks

# Each variable of the first branding, and the Settings → Branding field it stands for.
_FIRST_BRANDING = {
    "mailer_agency_name": "agency_name",
    "mailer_accent_colour": "accent_colour",
    "mailer_reply_to": "reply_to",
    "mailer_footer_text": "footer_text",
    "mailer_default_language": "default_locale",
    "mailer_time_zone": "time_zone",
}


class SmtpTls(StrEnum):
    """SMTP_TLS: how the connection to the SMTP server is protected."""

    # No TLS asked for; a password is still sent only after STARTTLS (smtp.py).
    OFF = "false"
    # STARTTLS, required ("true", as before).
    STARTTLS = "starttls"
    # TLS from the first byte ("SMTPS", port 465; RFC 8314).
    IMPLICIT = "implicit"


# The words pydantic took for the boolean SMTP_TLS was until it took "implicit" too.
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"", "0", "off", "f", "false", "n", "no"}


# One send, the connection's opening included, lasts at most this many
# MAILER_SMTP_TIMEOUT_SECONDS (connect, then one message), whatever the server's pace.
SEND_TIMEOUTS = 2


class MailerSettings(CommonSettings):
    smtp_tls: SmtpTls = SmtpTls.OFF
    # A PEM file of the CA certificates that sign the SMTP server's certificate (an internal
    # relay's private CA), trusted besides the system's. The certificate and its name are
    # always checked.
    mailer_smtp_ca_file: Path | None = None
    # On: SMTP_TLS=false is plain SMTP even with a login, as before (a relay on a trusted
    # network, a local mail catcher). Off: a login goes only over TLS; a server without
    # STARTTLS gets none, and the email waits, retried, with the reason in its error.
    mailer_smtp_allow_plaintext_auth: bool = False
    # This service's own broker user (mailer's password; see CommonSettings.service_amqp_url).
    mailer_broker_password: SecretStr | None = None
    # This service's own database role (see CommonSettings.service_database_url).
    mailer_database_password: SecretStr | None = None
    mailer_host: str = "127.0.0.1"
    mailer_port: int = port_field(8104)
    mailer_management_port: int = management_port_field("mailer", 9104)
    mailer_concurrency: int = Field(default=16, ge=1, le=256)
    # Retries back off exponentially from the base, with jitter, to at most the cap; a
    # delivery fails for good once the horizon since it was queued has passed.
    mailer_retry_base_seconds: float = Field(default=2.0, gt=0, le=600)
    mailer_retry_max_seconds: float = Field(default=RETRY_MAX_SECONDS, gt=0, le=86_400)
    mailer_give_up_after_seconds: float = Field(default=GIVE_UP_AFTER_SECONDS, gt=0, le=30 * 86_400)
    # MAILER_MAX_ATTEMPTS (a count of tries) is no longer read: the horizon replaced it.
    # A configuration that still sets it starts as before (unknown variables are ignored).
    # Bounds each answer of the SMTP server, and SEND_TIMEOUTS times this one email's whole
    # send (the connection's opening included: smtp.py), so a stalled or slow server can't
    # hold a worker forever.
    mailer_smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # A row left in 'sending' this long belongs to a crashed worker and is queued again
    # (at-least-once). Above SEND_TIMEOUTS SMTP timeouts (a whole send's bound: checked at
    # start), so a slow live send is never taken for a dead one.
    mailer_stuck_sending_seconds: float = Field(default=120.0, gt=0, le=86_400)

    # --- branding (services/mailer/branding) ---
    # The first values of Settings → Branding, used until an administrator saves it there
    # (after that the saved values win; no restart either way). Empty: not set.
    mailer_agency_name: str = ""
    mailer_accent_colour: str = ""
    mailer_reply_to: str = ""
    mailer_footer_text: str = ""
    # Settings → Branding's Language and Time Zone until they are saved (issue 17).
    mailer_default_language: str = "en"
    mailer_time_zone: str = "UTC"
    # How long a mailer replica may use the branding it read; the replica that saved a
    # change uses it at once.
    mailer_branding_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    # A directory of templates that replace the built-in ones, file by file
    # (docs/email-templates.md); a broken one falls back to the built-in, with a logged
    # error. Read when the mailer starts.
    mail_templates_dir: Path | None = None

    # Sent and failed emails' records, and the webhook delivery log's finished rows, are
    # deleted this long after their last try; a mail job older than this is not sent (its
    # record, which makes a job delivered twice send once, may be gone). At least the
    # inbox's memory: a lifecycle event is refused once older than that, so it can't
    # queue a webhook delivery a second time (docs/reliability.md).
    mailer_retention_days: float = Field(default=30.0, ge=7.0)

    # --- webhooks (services/mailer/webhooks) ---
    # Seals the endpoints' signing secrets at rest (Fernet; comma-separated for rotation,
    # the first seals). The development key is refused unless PUBLIC_URL is local.
    webhook_secret_key: SecretStr = SecretStr(WEBHOOK_DEVELOPMENT_KEY)
    # Loopback, private and link-local targets are refused unless this is true (tests, or
    # a receiver on the same private network on purpose).
    webhooks_allow_private: bool = False
    webhooks_concurrency: int = Field(default=4, ge=1, le=64)
    webhooks_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhooks_retry_base_seconds: float = Field(default=webhooks.RETRY_BASE_SECONDS, gt=0, le=600)
    webhooks_retry_max_seconds: float = Field(default=webhooks.RETRY_MAX_SECONDS, gt=0, le=86_400)
    webhooks_give_up_after_seconds: float = Field(
        default=webhooks.GIVE_UP_AFTER_SECONDS, gt=0, le=7 * 86_400
    )
    # After Rotate Secret, deliveries are signed with the old secret too for this long, so
    # a receiver can switch over without refusing anything.
    webhooks_rotation_overlap_seconds: float = Field(default=3600.0, ge=0, le=7 * 86_400)

    @property
    def webhook_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_seconds=self.webhooks_retry_base_seconds,
            max_seconds=self.webhooks_retry_max_seconds,
            give_up_after_seconds=self.webhooks_give_up_after_seconds,
        )

    def webhook_sealer(self) -> Sealer:
        return sealer_for(self.webhook_secret_key.get_secret_value(), "WEBHOOK_SECRET_KEY")

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_seconds=self.mailer_retry_base_seconds,
            max_seconds=self.mailer_retry_max_seconds,
            give_up_after_seconds=self.mailer_give_up_after_seconds,
        )

    @field_validator("smtp_tls", mode="before")
    @classmethod
    def _tls_words(cls, value: object) -> object:
        if isinstance(value, bool):
            return SmtpTls.STARTTLS if value else SmtpTls.OFF
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return SmtpTls.STARTTLS
            if word in _FALSE:
                return SmtpTls.OFF
            if word in (SmtpTls.STARTTLS, SmtpTls.IMPLICIT):
                return SmtpTls(word)
            raise ValueError(
                "must be false, true (STARTTLS, also written starttls) or implicit"
                " (TLS from the first byte, as on port 465)"
            )
        return value

    @field_validator("mailer_smtp_ca_file", "mail_templates_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("mailer_smtp_ca_file")
    @classmethod
    def _ca_file_loads(cls, value: Path | None) -> Path | None:
        """A missing or unreadable CA file is a start-up error, not an email retried for two
        days with every connection refused."""
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"must be a readable PEM file of CA certificates ({value}: {exc})"
                ) from None
        return value

    @model_validator(mode="after")
    def _stuck_outlasts_a_send(self) -> MailerSettings:
        bound = SEND_TIMEOUTS * self.mailer_smtp_timeout_seconds
        if self.mailer_stuck_sending_seconds <= bound:
            raise ValueError(
                f"MAILER_STUCK_SENDING_SECONDS must be more than {bound:g} s (twice"
                f" MAILER_SMTP_TIMEOUT_SECONDS, {self.mailer_smtp_timeout_seconds:g} s: the"
                " longest a live send lasts), or a slow send is taken for a crashed one and"
                " its email sent twice"
            )
        return self

    @model_validator(mode="after")
    def _retention_outlasts_the_inbox(self) -> MailerSettings:
        if self.mailer_retention_days * 24 < self.inbox_retention_hours:
            raise ValueError(
                "MAILER_RETENTION_DAYS must be at least INBOX_RETENTION_HOURS"
                f" ({self.inbox_retention_hours:g} hours): a webhook delivery forgotten"
                " sooner could be queued twice by an event sent again"
            )
        return self

    @field_validator(*_FIRST_BRANDING)
    @classmethod
    def _branding(cls, value: str, info: ValidationInfo) -> str:
        """The first branding passes the checks Settings → Branding makes."""
        try:
            return TEXT_CHECKS[_FIRST_BRANDING[str(info.field_name)]](value)
        except BrandingRefused as exc:
            raise ValueError(exc.message) from None

    @property
    def first_branding(self) -> Branding:
        return Branding(**{field: getattr(self, name) for name, field in _FIRST_BRANDING.items()})

    @field_validator("mail_from")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        addresses = email.utils.getaddresses([value])
        if len(addresses) != 1 or "@" not in addresses[0][1] or any(c in value for c in "\r\n"):
            raise ValueError("must be one address, e.g. 'ClientPress <no-reply@example.com>'")
        address = addresses[0][1]
        if address.isascii():
            return value
        # An internationalised domain goes into the From header, the Message-ID and the
        # envelope in its ASCII (IDNA) form, which every server and client takes; a local
        # part only SMTPUTF8 carries can't be in an ASCII From header at all.
        written = ascii_address(address)
        if written is None:
            raise ValueError(
                f"the address {address!r} must be ASCII before the @ (an internationalised"
                " domain after it is fine), e.g. 'ClientPress <no-reply@example.com>'"
            )
        head, _, tail = value.rpartition(address)
        return f"{head}{written}{tail}"
