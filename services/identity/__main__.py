"""``python -m services.identity [serve|migrate]``."""

from __future__ import annotations

from pathlib import Path

from libs.common.runner import main

from .app import SCHEMA, SERVICE, create_app
from .settings import IdentitySettings

if __name__ == "__main__":
    main(
        SERVICE,
        IdentitySettings,
        create_app,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        listen=lambda s: (s.identity_host, s.identity_port),
    )
