"""python -m services.gateway [serve|migrate]  (its schema holds the rate-limit counters)."""

from __future__ import annotations

from libs.common.runner import main

from .app import MIGRATIONS, SCHEMA, create_app
from .settings import GatewaySettings

if __name__ == "__main__":
    main("gateway", GatewaySettings, create_app, schema=SCHEMA, migrations=MIGRATIONS)
