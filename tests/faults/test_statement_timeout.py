"""A DBA's ``statement_timeout`` on the service's role (``ALTER ROLE … SET statement_timeout``,
as many installations set one to stop runaway queries): only this test's own role, on its
own database, is changed.

A migration waits for another run of the same schema (replicas started together, a
``make migrate`` beside a starting service) and may rightly take long (an index on a large
table): neither is a runaway query. The wait and the migration must not be cancelled by
the role's timeout; the migration runs once the other run is done. The same holds for
``python -m libs.common.provision database`` (the roles' setup job, run at every upgrade)
under its administrator role's timeout, waiting for another run of the same setup."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from libs.common.database_roles import database_of, role_name
from libs.common.db import lock_key
from tests.faults.support import record
from tests.support.env import TestEnv, new_test_env, provisioned
from tests.support.processes import ROOT

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def own_env() -> AsyncIterator[TestEnv]:
    async with provisioned(new_test_env()) as env:
        yield env


def _migrate(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    return _run(env, f"services.{service}", "migrate")


def _run(env: dict[str, str], module: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _waits_its_turn(
    other_run: asyncpg.Connection,
    turn: str,
    command: Callable[[], subprocess.CompletedProcess[str]],
) -> subprocess.CompletedProcess[str]:
    """``command`` run while ``other_run`` holds ``turn`` (the advisory lock another run of
    the same command takes) for 3 s, then lets it go; what the command did."""
    hold = other_run.transaction()
    await hold.start()
    await other_run.execute("SELECT pg_advisory_xact_lock($1)", lock_key(turn))
    running = asyncio.create_task(asyncio.to_thread(command))
    await asyncio.sleep(3)
    await hold.rollback()
    return await running


async def test_a_role_statement_timeout_does_not_cancel_a_migration_waiting_its_turn(
    own_env: TestEnv,
) -> None:
    role = role_name(own_env.database_name, "invitations")
    admin = await asyncpg.connect(own_env.database_url)
    other_run = await asyncpg.connect(own_env.database_url)
    try:
        await admin.execute(f"ALTER ROLE \"{role}\" SET statement_timeout = '300ms'")
        # Another run of the invitations migrations holds the schema's turn for 3 s.
        done = await _waits_its_turn(
            other_run,
            "migrate:invitations",
            lambda: _migrate(own_env.service_env(), "invitations"),
        )
        record(
            "migration_under_role_statement_timeout",
            returncode=done.returncode,
            output=(done.stdout + done.stderr)[-600:],
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-1500:]
        applied = await admin.fetchval("SELECT count(*) FROM invitations.schema_migrations")
        assert applied > 0
    finally:
        await admin.execute(f'ALTER ROLE "{role}" RESET statement_timeout')
        await other_run.close()
        await admin.close()


async def test_a_role_statement_timeout_does_not_cancel_the_roles_provisioning_waiting_its_turn(
    own_env: TestEnv,
) -> None:
    """``python -m libs.common.provision database`` as a DBA's administrator role with a
    ``statement_timeout``, while another run of it (a second replica of the setup job)
    holds the roles' turn for 3 s: it waits, then provisions."""
    admin_role = f"{own_env.database_name}_dba"
    admin_url = urlunsplit(urlsplit(own_env.database_url)._replace(netloc=_as(own_env, admin_role)))
    admin = await asyncpg.connect(own_env.database_url)
    other_run = await asyncpg.connect(own_env.database_url)
    try:
        await admin.execute(f'CREATE ROLE "{admin_role}" LOGIN SUPERUSER')
        await admin.execute(f"ALTER ROLE \"{admin_role}\" SET statement_timeout = '300ms'")
        done = await _waits_its_turn(
            other_run,
            f"roles:{database_of(own_env.database_url)}",
            lambda: _run(
                own_env.service_env(DATABASE_URL=admin_url), "libs.common.provision", "database"
            ),
        )
        record(
            "roles_provisioning_under_role_statement_timeout",
            returncode=done.returncode,
            output=(done.stdout + done.stderr)[-600:],
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-1500:]
        assert "database roles provisioned" in done.stdout
    finally:
        await other_run.close()
        await admin.execute(f'DROP ROLE IF EXISTS "{admin_role}"')
        await admin.close()


def _as(env: TestEnv, role: str) -> str:
    """The database server's address (``netloc``) as ``role``, without a password (the
    test servers trust local connections)."""
    host = urlsplit(env.database_url).netloc.rpartition("@")[2]
    return f"{role}@{host}"
