"""``python -m services.portals [serve|migrate]``."""

from __future__ import annotations

from libs.common.runner import main

from .app import MIGRATIONS, SCHEMA, SERVICE, create_app
from .settings import PortalsSettings

if __name__ == "__main__":
    main(SERVICE, PortalsSettings, create_app, schema=SCHEMA, migrations=MIGRATIONS)
