"""``python -m services.mailer [serve|migrate]``."""

from __future__ import annotations

from libs.common.runner import main

from .app import MIGRATIONS, SCHEMA, SERVICE, create_app
from .settings import MailerSettings

if __name__ == "__main__":
    main(SERVICE, MailerSettings, create_app, schema=SCHEMA, migrations=MIGRATIONS)
