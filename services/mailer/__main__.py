"""``python -m services.mailer [serve|migrate]``."""

from __future__ import annotations

from pathlib import Path

from libs.common.runner import main

from .app import create_app
from .settings import MailerSettings

if __name__ == "__main__":
    main(
        "mailer",
        MailerSettings,
        create_app,
        schema="mailer",
        migrations=Path(__file__).parent / "migrations",
        listen=lambda s: (s.mailer_host, s.mailer_port),
    )
