"""The public configuration (DESIGN.md "Runtime contract") as one pydantic-settings base."""

from __future__ import annotations

import sys
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="CommonSettings")


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names the variable."""


class CommonSettings(BaseSettings):
    """Variables every service reads. Service settings subclass this and add their own,
    named with the service's prefix (``MAILER_…``, ``IDENTITY_…``)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/clientpress"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    bus_prefix: str = Field(default="clientpress", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: bool = False
    mail_from: str = "ClientPress <no-reply@localhost>"
    public_url: AnyUrl = AnyUrl("http://localhost:8080")
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    admin_email: str | None = None
    admin_password: SecretStr | None = None
    log_level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"postgres", "postgresql"}:
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"amqp", "amqps"}:
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("smtp_username", "admin_email", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("smtp_password", "admin_password", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def public_base(self) -> str:
        """PUBLIC_URL without a trailing slash, ready to have a path appended."""
        return str(self.public_url).rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.scheme == "https"


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment, turning validation errors into a ConfigError
    that names each offending variable instead of a pydantic traceback."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "?"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def load_or_exit(cls: type[S]) -> S:
    try:
        return load_settings(cls)
    except ConfigError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
