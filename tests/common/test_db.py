"""The pool: what a released connection keeps and what it doesn't."""

import re
import uuid
from pathlib import Path

import pytest

from libs.common.db import COMMON_MIGRATIONS, Listener, create_pool, load_migrations, migrate
from tests.support.env import TestEnv

ROOT = Path(__file__).resolve().parents[2]

# Session-scoped state that would outlive a checkout now that the pool skips asyncpg's
# reset query: session advisory locks, session settings, LISTEN on a pooled connection.
SESSION_STATE = re.compile(
    r"pg_(try_)?advisory_lock(_shared)?\s*\(|[\"']\s*SET\s+(?!LOCAL\b)[a-z_]+\s*(TO|=)"
    r"|[\"']\s*LISTEN\b",
    re.IGNORECASE,
)


def test_no_code_leaves_session_state_on_a_pooled_connection() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("libs", "services")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SESSION_STATE.search(line)
    ]
    assert offenders == []


def test_the_check_sees_what_it_forbids() -> None:
    for line in (
        'await conn.execute("SET search_path TO x")',
        "conn.fetchval('SELECT pg_advisory_lock(1)')",
        'await conn.execute("LISTEN wake")',
    ):
        assert SESSION_STATE.search(line), line
    for line in (
        'await conn.execute("SET LOCAL search_path TO x")',
        '"UPDATE t SET a = 1"',
        '"SELECT pg_advisory_xact_lock($1)"',
    ):
        assert not SESSION_STATE.search(line), line


@pytest.mark.integration
async def test_a_released_connection_comes_back_clean(test_env: TestEnv, tmp_path: Path) -> None:
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    pool = await create_pool(test_env.database_url, schema, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
            # An unmanaged transaction left open (a bug elsewhere) is rolled back on release.
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO probe VALUES (1)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM probe") == 0
            # The service's schema is still first on the search path.
            assert await conn.fetchval("SELECT current_schema()") == schema
            # A transaction-level lock ends with its transaction.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(42)")
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()"
            )
            assert held == 0
    finally:
        await pool.close()


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0002_one.sql").write_text("SELECT 1;")
    (tmp_path / "0002_other.sql").write_text("SELECT 2;")
    with pytest.raises(ValueError, match="two migrations numbered 0002"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("service", ["identity", "portals", "invitations", "mailer"])
def test_every_service_numbers_its_migrations_once(service: str) -> None:
    directory = Path(__file__).resolve().parents[2] / "services" / service / "migrations"
    versions = [m.version for m in load_migrations(COMMON_MIGRATIONS, directory)]
    assert len(versions) == len(set(versions))


@pytest.mark.integration
async def test_pg_stat_activity_names_the_service_of_each_connection(
    test_env: TestEnv, tmp_path: Path
) -> None:
    """Every connection showed an empty application_name: an operator counting who holds
    PostgreSQL's connection slots (pg_stat_activity, or %a in the server's log) could not
    tell the five services apart. A DATABASE_URL that names one keeps its own."""
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    query = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    pool = await create_pool(test_env.database_url, schema, min_size=1, max_size=1)
    listener = Listener(
        test_env.database_url, "probe", lambda *_: None, name="probe", service=schema
    )
    try:
        assert await pool.fetchval(query) == f"clientpress-{schema}"
        await listener.ensure()
        assert listener._conn is not None
        assert await listener._conn.fetchval(query) == f"clientpress-{schema}"
    finally:
        await listener.close()
        await pool.close()
    own = await create_pool(
        test_env.database_url + "?application_name=ours", schema, min_size=1, max_size=1
    )
    try:
        assert await own.fetchval(query) == "ours"
    finally:
        await own.close()
