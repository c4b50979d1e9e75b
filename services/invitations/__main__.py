"""``python -m services.invitations [serve|migrate]``."""

from __future__ import annotations

from libs.common.runner import main

from .app import MIGRATIONS, SCHEMA, create_app
from .settings import InvitationsSettings

if __name__ == "__main__":
    main(
        "invitations",
        InvitationsSettings,
        create_app,
        schema=SCHEMA,
        migrations=MIGRATIONS,
        listen=lambda s: (s.invitations_host, s.invitations_port),
        management_port=lambda s: s.invitations_management_port,
    )
