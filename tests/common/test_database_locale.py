"""Addresses compare in any case (libs/common/email.py): the code lowers them as Python
does, a character at a time, and identity's unique index with PostgreSQL's ``lower()``,
which follows the database's locale. Where the two disagree one inbox becomes two
accounts: the migrations runner refuses such a database, saying why."""

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
from libs.common.email import email_key
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = ROOT / "services" / "identity" / "migrations"
UTF8 = "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
# How each database is made, the address the code takes as its owner's, one the database
# took as another person's, and the words the refusal names it by.
LOCALES = {
    # What initdb makes where no UTF-8 locale is set: lower('Ä') is 'Ä'.
    "libc-C": ("LC_COLLATE 'C' LC_CTYPE 'C'", "Ärger", "ärger", "LC_CTYPE 'C'"),
    # ICU under Turkish rules: lower('IVAN') has a dotless i (U+0131): an ASCII address.
    "icu-tr": (f"LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' {UTF8}", "IVAN", "ivan", "'tr-TR'"),
    # ICU lowers a word-final capital sigma to U+03C2; the code, a letter at a time, to U+03C3.
    "icu-und": (f"LOCALE_PROVIDER icu ICU_LOCALE 'und' {UTF8}", "ΝΙΚΟΣ", "νικοσ", "'und'"),
}


@pytest.fixture(params=sorted(LOCALES))
async def other_locale(
    request: pytest.FixtureRequest, test_env: TestEnv
) -> AsyncIterator[tuple[str, str, str, str]]:
    """A fresh database made with one of LOCALES: its URL, two spellings of one address
    and the words the refusal must say."""
    options, owner, other, words = LOCALES[request.param]
    name = f"cp_locale_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(test_env.admin_url)
    await admin.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' {options}")
    try:
        url = urlunsplit(urlsplit(test_env.admin_url)._replace(path=f"/{name}"))
        yield url, owner, other, words
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_database_that_lowers_otherwise_is_refused_before_any_migration(
    other_locale: tuple[str, str, str, str],
) -> None:
    """Before, identity migrated onto each, and its unique index then took the two
    spellings as two accounts."""
    url, owner, other, words = other_locale
    conn = await asyncpg.connect(url)
    try:
        # The disagreement itself: one address to the code, two to the database.
        assert email_key(f"{owner}@example.com") == email_key(f"{other}@example.com")
        assert await conn.fetchval("SELECT lower($1) <> lower($2)", owner, other)
        with pytest.raises(Exception, match="lower-cases letters otherwise") as refused:
            await migrate(url, "identity", IDENTITY)
        assert type(refused.value).__name__ == "DatabaseLocaleError"
        assert words in str(refused.value)
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'identity')"
        )
    finally:
        await conn.close()


async def test_the_migrate_command_says_why_without_a_traceback(
    other_locale: tuple[str, str, str, str],
) -> None:
    url, *_, words = other_locale
    done = subprocess.run(
        [sys.executable, "-m", "services.identity", "migrate"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
