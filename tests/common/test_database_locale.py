"""Addresses compare in any case (libs/common/email.py): the code lowers them as Python
does, and identity's unique index with PostgreSQL's ``lower()``, which follows the
database's LC_CTYPE. Under ``C`` it lowers ASCII letters alone, so the two disagree and one
inbox becomes two accounts: the migrations runner refuses such a database, saying why."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from libs.common.db import migrate
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def c_locale_url(test_env: TestEnv) -> AsyncIterator[str]:
    """A fresh database created as ``initdb`` makes one where no UTF-8 locale was set."""
    name = f"cp_ctype_c_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(test_env.admin_url)
    await admin.execute(
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    try:
        yield urlunsplit(urlsplit(test_env.admin_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_database_that_lowers_only_ascii_is_refused_before_any_migration(
    c_locale_url: str,
) -> None:
    """Before, identity migrated onto it, and then took Ärger@example.com and
    ärger@example.com as two accounts: lower('Ä') is 'Ä' under LC_CTYPE C."""
    with pytest.raises(Exception, match=r"LC_CTYPE 'C'") as refused:
        await migrate(c_locale_url, "identity", ROOT / "services" / "identity" / "migrations")
    assert type(refused.value).__name__ == "DatabaseLocaleError"
    conn = await asyncpg.connect(c_locale_url)
    try:
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'identity')"
        )
    finally:
        await conn.close()


async def test_the_migrate_command_says_why_without_a_traceback(c_locale_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.identity", "migrate"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": c_locale_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "LC_CTYPE" in done.stderr and "Traceback" not in done.stderr, done.stderr
