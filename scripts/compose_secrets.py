"""`make secrets`: fresh secrets for deploy/compose.yaml in deploy/.env.

Only the variables deploy/.env lacks are added, so running it again keeps the secrets an
installation already uses (and the broker users made with them).

PostgreSQL's administrator password is the one exception to "fresh": releases before it was
a secret wrote `clientpress` into compose.yaml, and PostgreSQL keeps the password its data
volume was made with. An installation that has a deploy/.env but not the variable keeps
that password, with a warning saying how to change it (docs/deploying.md)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from libs.common import broker
from libs.common.sealing import new_key
from libs.common.service_auth import (
    COMPOSE_PUBLIC_VARIABLE,
    generate,
    keygen_lines,
    write_private,
)

ENV_FILE = Path(__file__).resolve().parents[1] / "deploy" / ".env"
POSTGRES_ADMIN = "POSTGRES_ADMIN_PASSWORD"
# What compose.yaml wrote down before the password was a secret (its data volumes have it).
EARLIER_POSTGRES_ADMIN_PASSWORD = "clientpress"  # noqa: S105 (published in every old release)


def wanted() -> dict[str, str]:
    values = {f"{s.upper()}_BROKER_PASSWORD": secrets.token_urlsafe(24) for s in broker.SERVICES}
    values.update(
        {f"{s.upper()}_DATABASE_PASSWORD": secrets.token_urlsafe(24) for s in broker.SERVICES}
    )
    values.update(
        CRM_BROKER_PASSWORD=secrets.token_urlsafe(24),
        BROKER_ADMIN_PASSWORD=secrets.token_urlsafe(24),
        POSTGRES_ADMIN_PASSWORD=secrets.token_urlsafe(24),
        MAIL_JOB_KEY=new_key(),
        WEBHOOK_SECRET_KEY=new_key(),
        ADMIN_PASSWORD=secrets.token_urlsafe(18),
        GATEWAY_API_KEY=secrets.token_urlsafe(32),
    )
    # The services' keys for internal calls come as a set (each private key and the public
    # table that must match them): all made together.
    for line in keygen_lines(generate()):
        name, _, value = line.partition("=")
        values[name] = value
    return values


def main() -> int:
    existing = ENV_FILE.read_text() if ENV_FILE.exists() else ""
    present = {line.partition("=")[0] for line in existing.splitlines() if "=" in line}
    fresh = wanted()
    if COMPOSE_PUBLIC_VARIABLE in present:  # keep the whole key set, never half of it
        fresh = {k: v for k, v in fresh.items() if "_SERVICE_KEY" not in k}
    added = {k: v for k, v in fresh.items() if k not in present}
    kept_earlier = bool(existing) and POSTGRES_ADMIN in added
    if kept_earlier:
        added[POSTGRES_ADMIN] = EARLIER_POSTGRES_ADMIN_PASSWORD
    if added:
        lines = [existing.rstrip("\n")] if existing else ["# compose secrets (git-ignored)"]
        lines += [f"{k}={v}" for k, v in added.items()]
        write_private(ENV_FILE, "\n".join(lines) + "\n")
    elif ENV_FILE.exists():
        ENV_FILE.chmod(0o600)
    print(f"clientpress: {ENV_FILE} has every secret compose needs ({len(added)} new)")
    if kept_earlier:
        print(
            f"clientpress: {POSTGRES_ADMIN} is the earlier releases'"
            f" {EARLIER_POSTGRES_ADMIN_PASSWORD!r}, which the existing database volume was"
            " made with; change it as"
            ' docs/deploying.md says ("PostgreSQL\'s administrator password")',
            file=sys.stderr,
        )
    if "ADMIN_PASSWORD" in added:
        print(f"clientpress: administrator password: {added['ADMIN_PASSWORD']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
