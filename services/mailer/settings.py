"""Mailer configuration: the public variables plus ``MAILER_…``."""

from __future__ import annotations

import email.utils

from pydantic import Field, field_validator

from libs.common.settings import CommonSettings


class MailerSettings(CommonSettings):
    mailer_host: str = "127.0.0.1"
    mailer_port: int = Field(default=8104, ge=1, le=65535)
    mailer_concurrency: int = Field(default=16, ge=1, le=256)
    mailer_max_attempts: int = Field(default=8, ge=1, le=100)
    mailer_retry_base_seconds: float = Field(default=2.0, gt=0, le=600)
    # Bounds one SMTP conversation (connect, or one message), so a stalled server can't
    # hold a worker forever.
    mailer_smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # A row left in 'sending' this long belongs to a crashed worker and is queued again
    # (at-least-once). Keep it well above two SMTP timeouts (connect + one message), so a
    # slow live send is never taken for a dead one.
    mailer_stuck_sending_seconds: float = Field(default=120.0, gt=0, le=86_400)

    @field_validator("mail_from")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        _, address = email.utils.parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError("must be one address, e.g. 'ClientPress <no-reply@example.com>'")
        return value
