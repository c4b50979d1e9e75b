"""Gateway configuration: where the other services are, and the optional API key."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from libs.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    gateway_host: str = "0.0.0.0"  # noqa: S104 - the public entry listens on every interface
    identity_url: str = "http://127.0.0.1:8101"
    portals_url: str = "http://127.0.0.1:8102"
    invitations_url: str = "http://127.0.0.1:8103"
    gateway_api_key: SecretStr | None = None
    # Sliding-window limits on login, forgot-password and accept posts; per email,
    # logins count only failures.
    gateway_rate_window_seconds: int = Field(default=300, ge=1)
    gateway_rate_per_ip: int = Field(default=300, ge=1)
    gateway_rate_per_email: int = Field(default=20, ge=1)
    # How long a replica may trust what identity and portals vouched for (a session, a
    # portal page; services/gateway/cache.py); 0 asks them on every request.
    gateway_cache_seconds: float = Field(default=10.0, ge=0, le=300)

    @field_validator("gateway_api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def public_origin(self) -> str:
        url = self.public_url
        default = {"http": 80, "https": 443}.get(url.scheme)
        port = "" if url.port in (None, default) else f":{url.port}"
        return f"{url.scheme}://{url.host}{port}"
