"""Configuration of the invitations service (public variables plus INVITATIONS_…)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from libs.common.settings import CommonSettings, management_port_field, port_field


class InvitationsSettings(CommonSettings):
    # This service's own broker user (invitations's password; see CommonSettings.service_amqp_url).
    invitations_broker_password: SecretStr | None = None
    # This service's own database role (see CommonSettings.service_database_url).
    invitations_database_password: SecretStr | None = None
    invitations_host: str = "127.0.0.1"
    invitations_port: int = port_field(8103)
    invitations_management_port: int = management_port_field("invitations", 9103)
    portals_url: str = "http://127.0.0.1:8102"
    identity_url: str = "http://127.0.0.1:8101"
    invitations_sweep_seconds: float = Field(default=60, gt=0)
    # Caps on new links, however one is asked for (Resend, the API, invitation.requested,
    # Email me a new link, reminders): emails per invitation per hour (the first one
    # included), re-sends per address per hour across invitations (first invitations
    # neither count nor are refused), and Email me a new link per invitation per day.
    invitations_sends_per_invitation_hour: int = Field(default=5, ge=1)
    invitations_sends_per_address_hour: int = Field(default=20, ge=1)
    invitations_new_link_requests_per_day: int = Field(default=3, ge=1)
    # invitation.requested taken from one integration (its broker user; the user_id it
    # publishes with) in any hour, repeats of a key not counted; beyond, each is answered
    # invitation.rejected integration_rate_limited: a leaked or looping integration can't
    # turn the SMTP server into a spam cannon. Migrations in bulk: the batch API.
    invitations_requests_per_integration_hour: int = Field(default=1000, ge=0)  # 0: no cap
    # Invitations sent with one API key (created, resent, a batch's rows; a replayed
    # idempotency key not counted) in any hour; beyond, 429 integration_rate_limited (a
    # batch's rows past it: rejected with that reason). A leaked key can't mail the world:
    # one full 10,000-row batch an hour by default.
    invitations_requests_per_key_hour: int = Field(default=10_000, ge=0)  # 0: no cap
    # How often waiting "Email me a new link" requests are looked for (each request also
    # wakes its own replica's worker at once; this catches what a stopped replica left).
    invitations_new_link_seconds: float = Field(default=10, gt=0)
    # An accepted or revoked invitation's Personal Message is cleared this long after it
    # closed (docs/reliability.md "What is kept and for how long").
    invitations_retention_days: float = Field(default=30.0, ge=1.0)
