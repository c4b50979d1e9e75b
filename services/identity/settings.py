"""Identity configuration: the public variables plus ``IDENTITY_…``."""

from __future__ import annotations

import os

from pydantic import Field

from libs.common.settings import CommonSettings


def default_hash_concurrency() -> int:
    """One hash at a time per two cores: a hash already runs its four argon2 lanes in
    parallel (about 1.5 cores), and each holds 64 MiB while it runs."""
    return max(1, (os.cpu_count() or 1) // 2)


class IdentitySettings(CommonSettings):
    identity_host: str = "127.0.0.1"
    identity_port: int = Field(default=8101, ge=1, le=65535)
    identity_session_idle_minutes: int = Field(default=120, ge=1)
    identity_session_max_hours: int = Field(default=168, ge=1)
    # Password hashes (log in, set password) at once; peak memory is about 65 MiB plus
    # 64 MiB per hash in flight. More queue; they never weaken the hash.
    identity_hash_concurrency: int = Field(default_factory=default_hash_concurrency, ge=1, le=64)
