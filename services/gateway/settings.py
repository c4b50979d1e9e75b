"""Gateway configuration: where the other services are, the optional API key, the
proxies it trusts and its rate limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from libs.common.settings import CommonSettings, management_port_field

from .domain import Network, parse_networks

COOKIE_PREFIX = "__Host-"


class GatewaySettings(CommonSettings):
    # This service's own broker user (gateway's password; see CommonSettings.service_amqp_url).
    gateway_broker_password: SecretStr | None = None
    # This service's own database role (see CommonSettings.service_database_url).
    gateway_database_password: SecretStr | None = None
    gateway_host: str = "0.0.0.0"  # noqa: S104 - the public entry listens on every interface
    gateway_management_port: int = management_port_field("gateway", 9080)
    identity_url: str = "http://127.0.0.1:8101"
    portals_url: str = "http://127.0.0.1:8102"
    invitations_url: str = "http://127.0.0.1:8103"
    # The mailer's internal API: webhook endpoints and their delivery log.
    mailer_url: str = "http://127.0.0.1:8104"
    gateway_api_key: SecretStr | None = None
    # Limits on unauthenticated posts (log in, accept, forgot and reset password), shared
    # by every replica through the gateway schema (limits.py): per client address; failed
    # logins per account and address; reset emails per email address.
    gateway_rate_window_seconds: int = Field(default=300, ge=1, le=86_400)
    gateway_rate_per_ip: int = Field(default=300, ge=1)
    gateway_rate_per_email: int = Field(default=20, ge=1)
    # Peers (CIDRs, comma-separated) whose forwarded header names the client; empty: the
    # TCP peer is the client. The header must be one these proxies write.
    gateway_trusted_proxies: str = ""
    gateway_forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    # How long a replica may trust what identity and portals vouched for (a session, a
    # portal page; services/gateway/cache.py); 0 asks them on every request.
    gateway_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    # At most this many bytes of those answers per replica (cache.py; MAX_BYTES there): the
    # oldest go first.
    gateway_cache_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1)

    @field_validator("gateway_api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("gateway_forwarded_header", mode="before")
    @classmethod
    def _header_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def trusted_proxies(self) -> tuple[Network, ...]:
        return parse_networks(self.gateway_trusted_proxies)

    @property
    def session_cookie(self) -> str:
        """Under https the cookie names carry the ``__Host-`` prefix: browsers then accept
        them only Secure, for this exact host and path /, so no sibling subdomain can
        plant or overwrite them."""
        return f"{COOKIE_PREFIX}cp_session" if self.secure_cookies else "cp_session"

    @property
    def csrf_cookie(self) -> str:
        return f"{COOKIE_PREFIX}cp_csrf" if self.secure_cookies else "cp_csrf"

    @property
    def flash_cookie(self) -> str:
        """The message a page shows once after a change ("Invitation resent to …"): a
        sibling subdomain could otherwise put its own words in it, on every page."""
        return f"{COOKIE_PREFIX}cp_flash" if self.secure_cookies else "cp_flash"

    @property
    def public_origin(self) -> str:
        url = self.public_url
        default = {"http": 80, "https": 443}.get(url.scheme)
        port = "" if url.port in (None, default) else f":{url.port}"
        return f"{url.scheme}://{url.host}{port}"
