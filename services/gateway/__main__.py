"""python -m services.gateway [serve|migrate]  (migrate is a no-op: no schema)."""

from __future__ import annotations

from libs.common.runner import main

from .app import create_app
from .settings import GatewaySettings

if __name__ == "__main__":
    main(
        "gateway",
        GatewaySettings,
        create_app,
        schema=None,
        migrations=None,
        listen=lambda s: (s.gateway_host, s.gateway_port),
    )
