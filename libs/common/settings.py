"""The public configuration (docs/design.md "Runtime contract") as one pydantic-settings base."""

from __future__ import annotations

import sys
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import (
    AliasChoices,
    AnyUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import database_roles
from .broker import broker_user, user_of, with_credentials, with_heartbeat
from .protocol import BODY_TIMEOUT_SECONDS, HEAD_TIMEOUT_SECONDS
from .sealing import DEVELOPMENT_KEY, WEBHOOK_DEVELOPMENT_KEY, Sealer, key_material, sealer_for

S = TypeVar("S", bound="CommonSettings")


def port_field(default: int) -> Any:
    """A TCP port variable."""
    return Field(default=default, ge=1, le=65535)


def management_port_field(service: str, default: int) -> Any:
    """``<SERVICE>_MANAGEMENT_PORT``: /healthz, /readyz, /metrics (never routed by an
    ingress); MANAGEMENT_PORT is the generic name, for a container that runs one service."""
    return Field(
        default=default,
        ge=1,
        le=65535,
        validation_alias=AliasChoices(f"{service}_management_port", "management_port"),
    )


# The URL variables checked by scheme, and what the refusal says they must be.
_URL_SCHEMES = {
    "database_url": (frozenset({"postgres", "postgresql"}), "a postgresql:// URL"),
    "amqp_url": (frozenset({"amqp", "amqps"}), "an amqp:// or amqps:// URL"),
}


# Each service's own login to the broker and to the database.
_SERVICE_PASSWORDS = ("_broker_password", "_database_password")


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names the variable."""


class CommonSettings(BaseSettings):
    """Variables every service reads. Service settings subclass this and add their own,
    named with the service's prefix (``MAILER_…``, ``IDENTITY_…``)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/clientpress"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # AMQP heartbeats: a broker that stops answering without closing the connection (a
    # black hole) is noticed after about three times this, and the service reconnects.
    # aiormq's own 60 s left a service publishing and consuming nothing for three minutes
    # after the network was back (tests/faults/test_black_hole.py). AMQP_URL's
    # ``?heartbeat=`` wins; 0 turns heartbeats off.
    amqp_heartbeat_seconds: int = Field(default=10, ge=0, le=600)
    bus_prefix: str = Field(default="clientpress", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = port_field(1025)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # SMTP_TLS is the mailer's alone (services/mailer/settings.py: false, true, implicit).
    mail_from: str = "ClientPress <no-reply@localhost>"
    public_url: AnyUrl = AnyUrl("http://localhost:8080")
    gateway_port: int = port_field(8080)
    admin_email: str | None = None
    admin_password: SecretStr | None = None
    log_level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")
    # Slow clients (libs/common/protocol.py): how long a connection may wait for a request's
    # line and headers, from its opening or the previous answer (idle keep-alive included:
    # above a proxy's own keep-alive, 60 s in ingress-nginx, or it reuses closed ones), and
    # how long a request's body may take to arrive once its head has.
    http_head_timeout_seconds: float = Field(default=HEAD_TIMEOUT_SECONDS, gt=0, le=3600)
    http_body_timeout_seconds: float = Field(default=BODY_TIMEOUT_SECONDS, gt=0, le=3600)
    # How long a consumer remembers an applied event id. A redelivery comes within minutes
    # (the relay's republish after a crash, the queue's five deliveries with pauses); a
    # week is far beyond it, and keeps the inbox tables from growing forever.
    inbox_retention_hours: float = Field(default=168.0, ge=1.0)
    # Seals mail jobs (libs/common/sealing.py): identity and invitations seal, the mailer
    # opens. Comma-separated for rotation; the first key seals.
    mail_job_key: SecretStr = SecretStr(DEVELOPMENT_KEY)
    # Proof of the calling service on internal HTTP calls (libs/common/service_auth.py):
    # this service's Ed25519 private key, and every service's public keys. Unset = the
    # development keys shipped in the repository, refused unless PUBLIC_URL is local.
    service_key: SecretStr | None = None
    service_public_keys: str | None = None
    # Traces (libs/common/tracing.py): the OTLP/HTTP collector, e.g. http://otel-collector:4318
    # (spans go to <endpoint>/v1/traces). Unset = no traces, and no tracing cost. The other
    # OTEL_* variables of the OpenTelemetry SDK (headers, timeouts, batch sizes) apply too.
    otel_exporter_otlp_endpoint: str | None = None

    @field_validator("database_url", "amqp_url")
    @classmethod
    def _url_scheme(cls, value: str, info: ValidationInfo) -> str:
        schemes, expected = _URL_SCHEMES[str(info.field_name)]
        if urlsplit(value).scheme not in schemes:
            raise ValueError(f"must be {expected}")
        return value

    @field_validator("public_url")
    @classmethod
    def _origin_only(cls, value: AnyUrl) -> AnyUrl:
        """Every emailed link is PUBLIC_URL + a path, and the gateway answers at the root of
        its host: anything past the origin would break every link (and a password in it would
        be written into every email)."""
        if value.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        extras = [
            ("no path", value.path not in (None, "", "/")),
            ("no query", bool(value.query)),
            ("no fragment", bool(value.fragment)),
            ("no user name or password", bool(value.username or value.password)),
        ]
        wrong = [name for name, present in extras if present]
        if wrong:
            raise ValueError(
                "must be the site's address alone, like https://portal.example.com ("
                + ", ".join(wrong)
                + "): ClientPress answers at the root of its host"
            )
        return value

    @field_validator(
        "smtp_username",
        "admin_email",
        "service_public_keys",
        "otel_exporter_otlp_endpoint",
        "smtp_password",
        "admin_password",
        "service_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("*", mode="before")
    @classmethod
    def _empty_service_password_is_unset(cls, value: object, info: ValidationInfo) -> object:
        if info.field_name and info.field_name.endswith(_SERVICE_PASSWORDS) and value == "":
            return None
        return value

    def service_amqp_url(self, service: str) -> str:
        """The URL this service connects with: AMQP_URL's broker, logged in as the
        service's own user ``<BUS_PREFIX>-<service>`` when ``<SERVICE>_BROKER_PASSWORD``
        is set; otherwise AMQP_URL's user (which must then be that user); with
        AMQP_HEARTBEAT_SECONDS unless AMQP_URL asks for a heartbeat itself."""
        password = getattr(self, f"{service}_broker_password", None)
        url = self.amqp_url
        if password is not None:
            url = with_credentials(
                url, broker_user(self.bus_prefix, service), password.get_secret_value()
            )
        return with_heartbeat(url, self.amqp_heartbeat_seconds)

    def service_database_url(self, service: str) -> str:
        """The URL this service connects with: DATABASE_URL's server and database, logged
        in as the service's own role ``<database>_<service>`` when
        ``<SERVICE>_DATABASE_PASSWORD`` is set (libs/common/database_roles.py); otherwise
        DATABASE_URL as it is."""
        password = getattr(self, f"{service}_database_password", None)
        if password is None:
            return self.database_url
        return database_roles.service_url(self.database_url, service, password.get_secret_value())

    def listen(self, service: str) -> tuple[str, int]:
        """Where the service serves its API: ``<SERVICE>_HOST`` and ``<SERVICE>_PORT``."""
        return str(getattr(self, f"{service}_host")), int(getattr(self, f"{service}_port"))

    def management_port(self, service: str) -> int:
        """``<SERVICE>_MANAGEMENT_PORT`` (see management_port_field)."""
        return int(getattr(self, f"{service}_management_port"))

    @property
    def public_base(self) -> str:
        """PUBLIC_URL without a trailing slash, ready to have a path appended."""
        return str(self.public_url).rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.scheme == "https"

    @property
    def local(self) -> bool:
        """PUBLIC_URL names this machine: a developer's run, where shipped defaults do."""
        return (self.public_url.host or "") in LOCAL_HOSTS

    def sealer(self) -> Sealer:
        return sealer_for(self.mail_job_key.get_secret_value())

    def known_secrets_in_use(self) -> list[str]:
        """The variables whose value is one shipped in this repository (so known to
        anyone who has read it)."""
        found = []
        for name, value in self:
            if isinstance(value, SecretStr):
                secrets = (
                    value.get_secret_value().split(",")
                    if name in ("mail_job_key", "webhook_secret_key")
                    else [value.get_secret_value()]
                )
            elif name in ("database_url", "amqp_url"):
                secrets = [unquote(urlsplit(value).password or "")]
            else:
                continue
            if any(_known(name, secret) for secret in secrets):
                found.append(name.upper())
        return found


def _known(name: str, secret: str) -> bool:
    if secret.strip() in KNOWN_SECRETS:
        return True
    # A sealing key is known by the key Fernet reads from it, however it is spelled.
    return name in ("mail_job_key", "webhook_secret_key") and (
        key_material(secret) in KNOWN_KEY_MATERIAL
    )


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

# Every secret value written anywhere in this repository (Makefile, deploy/, docs,
# examples, the local defaults): tests/security/test_known_secrets.py fails when one is
# added without being listed here.
KNOWN_SECRETS = frozenset(
    {
        DEVELOPMENT_KEY,
        WEBHOOK_DEVELOPMENT_KEY,
        "change-this-admin-password",
        "clientpress-local-admin",
        "local-api-key-not-for-production",
        "CHANGE-ME",
        "CHANGE-ME-at-least-12-characters",
        "CHANGE-ME-a-long-random-string",
        "CHANGE-ME-base64-of-32-random-bytes",
        "clientpress",
        "guest",
        "local-identity-broker-password",
        "local-portals-broker-password",
        "local-invitations-broker-password",
        "local-mailer-broker-password",
        "local-gateway-broker-password",
        "local-crm-broker-password",
        "local-identity-database-password",
        "local-portals-database-password",
        "local-invitations-database-password",
        "local-mailer-database-password",
        "local-gateway-database-password",
        "bG9jYWwtb3ZlcmxheS1tYWlsLWpvYi1rZXktMDAwMDA=",
        "bG9jYWwtb3ZlcmxheS13ZWJob29rLXNlY3JldHMtMDA=",
    }
)


# The shipped sealing keys, as the keys Fernet reads from them.
KNOWN_KEY_MATERIAL = frozenset(
    material for material in map(key_material, KNOWN_SECRETS) if material is not None
)


def refuse_known_secrets(settings: CommonSettings) -> None:
    """Outside localhost, a service doesn't start on a secret everyone can read here."""
    if settings.local:
        return
    names = settings.known_secrets_in_use()
    if names:
        raise ConfigError(
            f"{', '.join(names)}: a value shipped with ClientPress, known to anyone who has"
            f" read it; PUBLIC_URL is {settings.public_base}, so set a secret of your own"
            " (docs/deploying.md)"
        )


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


def check_broker_user(settings: CommonSettings, service: str) -> None:
    """A service logs in to the broker as its own user, ``<BUS_PREFIX>-<service>``: what
    it publishes carries that user, and consumers act only on events their owner sent."""
    expected = broker_user(settings.bus_prefix, service)
    actual = user_of(settings.service_amqp_url(service))
    if actual != expected:
        raise ConfigError(
            f"AMQP_URL: must log in as this service's broker user {expected!r}, not"
            f" {actual!r} (`make run` and `python -m libs.common.provision provision` create"
            " the users; see docs/deploying.md)"
        )


def load_or_exit(cls: type[S]) -> S:
    try:
        return load_settings(cls)
    except ConfigError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
