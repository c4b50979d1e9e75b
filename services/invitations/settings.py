"""Configuration of the invitations service (public variables plus INVITATIONS_…)."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import CommonSettings


class InvitationsSettings(CommonSettings):
    invitations_host: str = "127.0.0.1"
    invitations_port: int = Field(default=8103, ge=1, le=65535)
    portals_url: str = "http://127.0.0.1:8102"
    identity_url: str = "http://127.0.0.1:8101"
    invitations_sweep_seconds: float = Field(default=60, gt=0)
