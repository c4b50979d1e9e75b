"""Portals configuration: the public variables plus ``PORTALS_…``."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from libs.common.settings import CommonSettings


class PortalsSettings(CommonSettings):
    # This service's own broker user (portals's password; see CommonSettings.service_amqp_url).
    portals_broker_password: SecretStr | None = None
    portals_host: str = "127.0.0.1"
    portals_port: int = Field(default=8102, ge=1, le=65535)
    # /healthz, /readyz, /metrics (never routed by an ingress); MANAGEMENT_PORT is the
    # generic name, for a container that runs one service.
    portals_management_port: int = Field(
        default=9102,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("portals_management_port", "management_port"),
    )
    # Listed in docs/internal-api.md; portals makes no calls to identity today (user ids
    # are validated by the gateway, see repository.py), so nothing reads it yet.
    identity_url: str = "http://127.0.0.1:8101"
