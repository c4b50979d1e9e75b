"""Nobody on the database is trusted for being there either: each service logs in as its
own role, which owns its schema and may not read or write any other. Before, every
service used one login, so whoever held one service's credentials could read identity's
password hashes, write a session for any account or mark any invitation accepted."""

from __future__ import annotations

import base64
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.common import broker, database_roles
from libs.common.db import migrate
from libs.common.provision import main as provision_main
from tests.support.env import TestEnv
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {s: ROOT / "services" / s / "migrations" for s in broker.SERVICES}

# What another service's role tries in each schema: reading the secrets and writing the
# facts the brief names (a session for anyone, an invitation accepted, a portal opened).
FORBIDDEN = {
    "identity": [
        "SELECT password_hash FROM identity.users LIMIT 1",
        "INSERT INTO identity.schema_migrations (version, name) VALUES ('9999', 'forged')",
    ],
    "invitations": ["UPDATE invitations.invitations SET status = 'accepted'"],
    "portals": ["UPDATE portals.portals SET status = 'active'"],
    "mailer": ["SELECT * FROM mailer.deliveries LIMIT 1"],
    "gateway": ["DELETE FROM gateway.schema_migrations"],
}


async def _refused(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_each_service_may_use_its_own_schema_and_no_other(
    migrated_schemas: TestEnv,
) -> None:
    env = migrated_schemas
    for service, other in itertools.permutations(broker.SERVICES, 2):
        for statement in FORBIDDEN[other]:
            await _refused(env.database_url_as(service), statement)
    for service in broker.SERVICES:
        conn = await asyncpg.connect(env.database_url_as(service))
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {service}.schema_migrations") > 0
            attributes = await conn.fetchrow(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
                " FROM pg_roles WHERE rolname = current_user"
            )
            assert not any(attributes.values()), dict(attributes)
        finally:
            await conn.close()
        # Nor may it make a schema of its own beside the one it was given, nor put a table
        # in the schema every service's search path ends with.
        await _refused(env.database_url_as(service), "CREATE SCHEMA squatter")
        await _refused(env.database_url_as(service), "CREATE TABLE public.squatter (id int)")


async def test_every_service_of_a_running_stack_logs_in_as_its_own_role(
    sec_stack: Stack,
) -> None:
    """The stack's services, started as a deployment starts them (``<SERVICE>_DATABASE_PASSWORD``
    beside DATABASE_URL), hold their connections as their own roles, and only those."""
    database = database_roles.database_of(sec_stack.database_url)
    conn = await asyncpg.connect(sec_stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT application_name, usename FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name LIKE 'clientpress-%'",
            database,
        )
    finally:
        await conn.close()
    seen = {row["application_name"].removeprefix("clientpress-"): row["usename"] for row in rows}
    expected = {s: database_roles.role_name(database, s) for s in broker.SERVICES}
    assert {s: seen.get(s) for s in broker.SERVICES} == expected
    assert len(rows) == len(broker.SERVICES), rows


@pytest.fixture
async def earlier_release(test_env: TestEnv) -> AsyncIterator[str]:
    """A database of its own, migrated as releases before this one did: everything made
    and owned by the administrator's login. Yields the administrator's URL."""
    name = f"{test_env.database_name}_up_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(test_env.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = test_env.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        for schema, directory in SCHEMAS.items():
            await migrate(url, schema, directory)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        await database_roles.drop(url)


async def test_an_upgrade_hands_each_schema_over_with_everything_in_it(
    earlier_release: str,
) -> None:
    admin = await asyncpg.connect(earlier_release)
    try:
        await admin.execute(
            "INSERT INTO portals.portals (id, title, slug, status, created_at, updated_at)"
            " VALUES (gen_random_uuid(), 'Before', 'before', 'active', now(), now())"
        )
    finally:
        await admin.close()
    passwords = broker.new_passwords()
    await database_roles.provision(earlier_release, passwords)
    # Twice, as every upgrade runs it: nothing changes, nothing fails.
    await database_roles.provision(earlier_release, passwords)
    for service in broker.SERVICES:
        url = database_roles.service_url(earlier_release, service, passwords[service])
        assert await migrate(url, service, SCHEMAS[service]) == []
        conn = await asyncpg.connect(url)
        try:
            owners = await conn.fetch(
                "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
                " AND c.relkind IN ('r', 'p', 'v', 'm', 'S')",
                service,
            )
            role = database_roles.role_name(database_roles.database_of(earlier_release), service)
            assert owners and {row["owner"] for row in owners} == {role}, owners
        finally:
            await conn.close()
    portals = database_roles.service_url(earlier_release, "portals", passwords["portals"])
    conn = await asyncpg.connect(portals)
    try:
        assert await conn.fetchval("SELECT title FROM portals.portals") == "Before"
        await conn.execute("UPDATE portals.portals SET title = 'After'")
    finally:
        await conn.close()
    await _refused(
        database_roles.service_url(earlier_release, "mailer", passwords["mailer"]),
        "SELECT * FROM portals.portals",
    )


async def test_a_migration_run_as_the_administrator_leaves_its_tables_to_the_schemas_role(
    earlier_release: str, tmp_path: Path
) -> None:
    """`make migrate`, or `python -m services.<name> migrate` by hand after a restore, runs
    as whoever DATABASE_URL names. A table it made in a role's schema was the
    administrator's, and the service, logging in as its role, could not use it."""
    passwords = broker.new_passwords()
    await database_roles.provision(earlier_release, passwords)
    newer = tmp_path / "portals"
    newer.mkdir()
    for migration in SCHEMAS["portals"].glob("*.sql"):
        (newer / migration.name).write_text(migration.read_text())
    (newer / "9999_newer_release.sql").write_text(
        "CREATE TABLE newer (id bigserial PRIMARY KEY, note text);"
    )
    assert await migrate(earlier_release, "portals", newer) == ["9999_newer_release.sql"]
    conn = await asyncpg.connect(
        database_roles.service_url(earlier_release, "portals", passwords["portals"])
    )
    try:
        await conn.execute("INSERT INTO portals.newer (note) VALUES ('the service writes it')")
        assert await conn.fetchval("SELECT count(*) FROM portals.newer") == 1
    finally:
        await conn.close()


async def test_the_password_is_sent_as_the_verifier_postgresql_itself_makes(
    test_env: TestEnv,
) -> None:
    """The role's password goes to the server as a SCRAM-SHA-256 verifier (a statement
    log never holds the password). Compared with the one the server makes from the same
    password and salt, so a login with it is one the server accepts."""
    role = f"{test_env.database_name}_scram"
    conn = await asyncpg.connect(test_env.database_url)
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        await conn.execute(f"CREATE ROLE {role} PASSWORD 'correct horse'")
        made = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.close()
    salt = base64.b64decode(made.split("$")[1].split(":")[1])
    assert database_roles.scram_verifier("correct horse", salt=salt) == made
    with pytest.raises(database_roles.RoleError, match="printable ASCII"):
        database_roles.scram_verifier("pässword")


def test_the_command_names_every_password_it_lacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for service in broker.SERVICES:
        monkeypatch.delenv(f"{service.upper()}_DATABASE_PASSWORD", raising=False)
    monkeypatch.setenv("IDENTITY_DATABASE_PASSWORD", "x" * 24)
    with pytest.raises(SystemExit) as exited:
        provision_main(["database"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "PORTALS_DATABASE_PASSWORD, INVITATIONS_DATABASE_PASSWORD" in error
    assert "IDENTITY_DATABASE_PASSWORD" not in error


def test_a_role_name_postgresql_would_cut_short_is_refused() -> None:
    with pytest.raises(database_roles.RoleError, match="shorter database name"):
        database_roles.role_name("d" * 60, "invitations")
