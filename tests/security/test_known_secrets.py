"""A secret written down in this repository is known to everyone (issue 13): outside
localhost a service refuses to start on one, and the list it checks can't fall behind
what the repository ships."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.sealing import DEVELOPMENT_KEY, new_key
from libs.common.settings import KNOWN_SECRETS, CommonSettings, ConfigError, refuse_known_secrets

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"(PASSWORD|_KEY|PASS|SECRET)$")
# NAME=value (env files, Makefile, kustomize literals) and NAME: value (YAML)
ASSIGNMENT = re.compile(
    r"^[ \t]*(?:-[ \t]+|export[ \t]+)?([A-Z][A-Z0-9_]*)[ \t]*(?:\?=|=|:)[ \t]*([^\s#'\"]+)",
    re.MULTILINE,
)
SHIPPED = [
    ROOT / "Makefile",
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "deploy").rglob("*.env*")),
]


def shipped_secret_values() -> set[str]:
    found = set()
    for path in SHIPPED:
        for name, value in ASSIGNMENT.findall(path.read_text()):
            if not SECRET_NAME.search(name) or value.startswith("$"):
                continue
            # kustomize's "- NAME=value" literals and BROKER_INTEGRATIONS=user=password
            found.add(value.rsplit("=", 1)[-1] if "=" in value[:-1] else value)
    return found - {""}


def test_every_secret_the_repository_ships_is_known() -> None:
    shipped = shipped_secret_values()
    assert "clientpress-local-admin" in shipped or "change-this-admin-password" in shipped
    assert shipped <= KNOWN_SECRETS, sorted(shipped - KNOWN_SECRETS)


def production(**values: object) -> CommonSettings:
    return CommonSettings.model_validate(
        {
            "public_url": "https://portal.agency.example",
            "amqp_url": "amqps://rabbitmq.agency.example:5671/",
            "mail_job_key": new_key(),
            **values,
        }
    )


def test_fresh_secrets_start_and_shipped_ones_do_not() -> None:
    refuse_known_secrets(production(admin_password="a-fresh-secret-of-my-own"))
    for values, named in (
        ({"admin_password": "change-this-admin-password"}, "ADMIN_PASSWORD"),
        ({"mail_job_key": DEVELOPMENT_KEY}, "MAIL_JOB_KEY"),
        ({"mail_job_key": f"{new_key()},{DEVELOPMENT_KEY}"}, "MAIL_JOB_KEY"),
        # Fernet reads past what isn't base64: quotes an env file kept (`docker run
        # --env-file` keeps them), a stray character. Before: these started, sealing
        # every link with the public key.
        ({"mail_job_key": f'"{DEVELOPMENT_KEY}"'}, "MAIL_JOB_KEY"),
        ({"mail_job_key": f"{DEVELOPMENT_KEY[:8]}.{DEVELOPMENT_KEY[8:]}"}, "MAIL_JOB_KEY"),
        ({"amqp_url": "amqp://guest:guest@rabbitmq:5672/"}, "AMQP_URL"),
        ({"database_url": "postgresql://clientpress:clientpress@db/cp"}, "DATABASE_URL"),
    ):
        with pytest.raises(ConfigError, match=named):
            refuse_known_secrets(production(**values))
    # On this machine the shipped defaults are what make the two commands work.
    refuse_known_secrets(
        CommonSettings.model_validate({"admin_password": "change-this-admin-password"})
    )


def test_a_service_refuses_to_start_on_a_shipped_secret_outside_localhost() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PUBLIC_URL": "https://portal.agency.example",
        "ADMIN_EMAIL": "admin@agency.example",
        "ADMIN_PASSWORD": "change-this-admin-password",
        "BUS_PREFIX": "refusal",
        "IDENTITY_BROKER_PASSWORD": "a-fresh-broker-password",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.identity"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "ADMIN_PASSWORD" in done.stderr and "MAIL_JOB_KEY" in done.stderr, done.stderr
    assert "change-this-admin-password" not in done.stderr  # named, never printed
