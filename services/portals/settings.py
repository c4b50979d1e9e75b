"""Portals configuration: the public variables plus ``PORTALS_…``."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import CommonSettings


class PortalsSettings(CommonSettings):
    portals_host: str = "127.0.0.1"
    portals_port: int = Field(default=8102, ge=1, le=65535)
    # Listed in docs/internal-api.md; portals makes no calls to identity today (user ids
    # are validated by the gateway, see repository.py), so nothing reads it yet.
    identity_url: str = "http://127.0.0.1:8101"
