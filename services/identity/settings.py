"""Identity configuration: the public variables plus ``IDENTITY_…``."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import CommonSettings


class IdentitySettings(CommonSettings):
    identity_host: str = "127.0.0.1"
    identity_port: int = Field(default=8101, ge=1, le=65535)
    identity_session_idle_minutes: int = Field(default=120, ge=1)
    identity_session_max_hours: int = Field(default=168, ge=1)
