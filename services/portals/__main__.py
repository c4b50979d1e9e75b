"""``python -m services.portals [serve|migrate]``."""

from __future__ import annotations

from pathlib import Path

from libs.common.runner import main

from .app import SCHEMA, SERVICE, create_app
from .settings import PortalsSettings

if __name__ == "__main__":
    main(
        SERVICE,
        PortalsSettings,
        create_app,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        listen=lambda s: (s.portals_host, s.portals_port),
    )
