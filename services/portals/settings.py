"""Portals configuration: the public variables plus ``PORTALS_…``."""

from __future__ import annotations

from pydantic import SecretStr

from libs.common.settings import CommonSettings, management_port_field, port_field


class PortalsSettings(CommonSettings):
    # This service's own broker user (portals's password; see CommonSettings.service_amqp_url).
    portals_broker_password: SecretStr | None = None
    # This service's own database role (see CommonSettings.service_database_url).
    portals_database_password: SecretStr | None = None
    portals_host: str = "127.0.0.1"
    portals_port: int = port_field(8102)
    portals_management_port: int = management_port_field("portals", 9102)
    # Listed in docs/internal-api.md; portals makes no calls to identity today (user ids
    # are validated by the gateway, see repository.py), so nothing reads it yet.
    identity_url: str = "http://127.0.0.1:8101"
