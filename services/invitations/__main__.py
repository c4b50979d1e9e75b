"""``python -m services.invitations [serve|migrate]``."""

from __future__ import annotations

from pathlib import Path

from libs.common.runner import main

from .app import SCHEMA, create_app
from .settings import InvitationsSettings

if __name__ == "__main__":
    main(
        "invitations",
        InvitationsSettings,
        create_app,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        listen=lambda s: (s.invitations_host, s.invitations_port),
    )
