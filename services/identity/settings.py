"""Identity configuration: the public variables plus ``IDENTITY_…``."""

from __future__ import annotations

import os
from datetime import timedelta

from pydantic import Field, SecretStr

from libs.common.settings import CommonSettings, management_port_field, port_field


def default_hash_concurrency() -> int:
    """One hash at a time per two cores: a hash already runs its four argon2 lanes in
    parallel (about 1.5 cores), and each holds 64 MiB while it runs."""
    return max(1, (os.cpu_count() or 1) // 2)


class IdentitySettings(CommonSettings):
    # This service's own broker user (identity's password; see CommonSettings.service_amqp_url).
    identity_broker_password: SecretStr | None = None
    # This service's own database role (see CommonSettings.service_database_url).
    identity_database_password: SecretStr | None = None
    identity_host: str = "127.0.0.1"
    identity_port: int = port_field(8101)
    identity_management_port: int = management_port_field("identity", 9101)
    identity_session_idle_minutes: int = Field(default=120, ge=1)
    identity_session_max_hours: int = Field(default=168, ge=1)
    # Ended sessions and spent or expired password-reset links are deleted this long after
    # they ended (docs/reliability.md "What is kept and for how long").
    identity_retention_days: float = Field(default=30.0, ge=1.0)
    # The Activity log's entries are deleted this long after the change; 0 keeps them for
    # good (the default: it is the audit log).
    identity_activity_retention_days: float = Field(default=0.0, ge=0.0)

    @property
    def activity_retention(self) -> timedelta | None:
        days = self.identity_activity_retention_days
        return timedelta(days=days) if days else None

    # Password hashes (log in, set password) at once; peak memory is about 65 MiB plus
    # 64 MiB per hash in flight. More queue; they never weaken the hash.
    identity_hash_concurrency: int = Field(default_factory=default_hash_concurrency, ge=1, le=64)
    # Hashes that may wait for one of those; beyond, 503 with Retry-After at once. A hash
    # that has waited longer than the max wait is not started and answers 503 too: the
    # gateway's calls time out after 10 s, so it would finish for nobody.
    identity_hash_queue: int = Field(default=32, ge=0, le=10_000)
    identity_hash_max_wait_seconds: float = Field(default=8.0, gt=0, le=60)
