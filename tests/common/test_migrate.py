"""The migrations runner during a rolling update: the previous release keeps serving on
the schema while the new one's migrations run, so a migration holds its locks only for
its own file, and never queues the service's statements behind a lock it waits for."""

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from libs.common.db import lock_key, migrate
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

# Long enough for any wait here, short enough that a runner that never lets go fails.
PATIENCE = 30.0


async def _eventually(conn: asyncpg.Connection, query: str, *args: object) -> None:
    """Wait until ``query`` answers true (at most PATIENCE seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not await conn.fetchval(query, *args):
        assert loop.time() < deadline, f"never true: {query}"
        await asyncio.sleep(0.02)


async def test_each_migration_commits_and_lets_go_of_its_tables_before_the_next(
    test_env: TestEnv, tmp_path: Path
) -> None:
    """The third migration waits (on an advisory lock the test holds, as a long backfill
    would take its time): the first two are committed and visible, and the table the
    second altered is not locked meanwhile. Before, every pending migration ran in one
    transaction, so an upgrade over several releases kept ``invitations`` locked for all
    of them, and the previous release's replicas answered 503 all along."""
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    hold = lock_key(f"test:{schema}")
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (tmp_path / "0002_name.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    (tmp_path / "0003_slow.sql").write_text(f"SELECT pg_advisory_xact_lock({hold});")
    holder = await asyncpg.connect(test_env.database_url)
    await holder.execute("SELECT pg_advisory_lock($1)", hold)
    running = asyncio.create_task(migrate(test_env.database_url, schema, tmp_path))
    try:
        await _eventually(
            holder,
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = ($1::bigint & 4294967295)::oid)",
            hold,
        )
        applied = await holder.fetch(f"SELECT name FROM {schema}.schema_migrations")
        assert {"0001_things.sql", "0002_name.sql"} <= {row["name"] for row in applied}
        locks = await holder.fetch(
            "SELECT mode FROM pg_locks WHERE relation = $1::regclass", f"{schema}.things"
        )
        assert [row["mode"] for row in locks] == []
        await holder.execute("SELECT pg_advisory_unlock($1)", hold)
        assert "0003_slow.sql" in await asyncio.wait_for(running, PATIENCE)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await holder.close()


async def test_a_migration_that_waits_for_a_lock_steps_aside_for_the_service(
    test_env: TestEnv, tmp_path: Path
) -> None:
    """A replica of the previous release holds a transaction on a table the migration
    alters (a long read, a batch being written). The migration's ALTER must not wait in
    the lock queue meanwhile: every statement of the service on that table would queue
    behind it, reads included, until the long transaction ended. It gives up the wait
    after its lock timeout, tries again after a pause, and is applied once the table is
    free. Before, a plain read of the table hung behind the waiting ALTER."""
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_things.sql").write_text(
        "CREATE TABLE things (id int PRIMARY KEY); INSERT INTO things VALUES (1);"
    )
    await migrate(test_env.database_url, schema, tmp_path)
    (tmp_path / "0002_name.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    replica = await asyncpg.connect(test_env.database_url)
    reader = await asyncpg.connect(test_env.database_url)
    watcher = await asyncpg.connect(test_env.database_url)
    long_read = replica.transaction()
    await long_read.start()
    await replica.fetchval(f"SELECT count(*) FROM {schema}.things")
    running = asyncio.create_task(
        migrate(test_env.database_url, schema, tmp_path, lock_timeout=0.2)
    )
    try:
        # The ALTER asks for the table's lock and waits for the long transaction.
        await _eventually(
            watcher,
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = $1::regclass"
            " AND mode = 'AccessExclusiveLock' AND NOT granted)",
            f"{schema}.things",
        )
        # The service's reads of the table still get through.
        for _ in range(5):
            read = reader.fetchval(f"SELECT count(*) FROM {schema}.things")
            assert await asyncio.wait_for(read, PATIENCE) == 1
        assert not running.done()
        await long_read.commit()
        assert await asyncio.wait_for(running, PATIENCE) == ["0002_name.sql"]
        assert await reader.fetchval(f"SELECT name FROM {schema}.things") is None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        for conn in (replica, reader, watcher):
            await conn.close()
