"""``python -m services.mailer [serve|migrate]``."""

from __future__ import annotations

from libs.common.runner import main

from .app import MIGRATIONS, create_app
from .settings import MailerSettings

if __name__ == "__main__":
    main(
        "mailer",
        MailerSettings,
        create_app,
        schema="mailer",
        migrations=MIGRATIONS,
        listen=lambda s: (s.mailer_host, s.mailer_port),
        management_port=lambda s: s.mailer_management_port,
    )
