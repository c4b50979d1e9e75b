"""One PostgreSQL role per service, each the owner of its own schema and of nothing else.

With one login for every service, a program that got one service's credentials (or the
service itself, subverted) could read password hashes in ``identity.users``, write a
session into ``identity.sessions`` or mark any invitation accepted. With these roles a
service can use only its own schema: every other schema refuses it ("permission denied
for schema identity"), as the broker refuses what a service doesn't own.

``python -m libs.common.provision database`` makes the roles with the database
administrator's ``DATABASE_URL``: ``<database>_<service>`` (``clientpress_identity`` for
the database ``clientpress``), a login with ``<SERVICE>_DATABASE_PASSWORD``, no other
attribute; the schema of the same name is created for it, or, when an earlier release made
it under the administrator, handed over with everything in it. A service given
``<SERVICE>_DATABASE_PASSWORD`` logs in as its role (``CommonSettings.service_database_url``)
and migrates its schema itself. The password is sent as a SCRAM-SHA-256 verifier, never as
text a server log could keep."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from .broker import SERVICES, with_credentials
from .db import MIGRATION_SESSION, ensure_database, xact_lock

# PostgreSQL's identifiers are cut at 63 bytes (NAMEDATALEN - 1): a longer role name
# would be silently shortened, and two services' could meet.
MAX_ROLE_BYTES = 63
SCRAM_ITERATIONS = 4096


class RoleError(ValueError):
    """The roles can't be made as asked; the message says why, in a person's words."""


def database_of(url: str) -> str:
    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise RoleError("DATABASE_URL: name the database (postgresql://host:5432/clientpress)")
    return name


def role_name(database: str, service: str) -> str:
    """The role ``service`` logs in as in ``database``: unique per installation sharing a
    PostgreSQL server, since roles are the server's, not the database's."""
    name = f"{database}_{service}"
    if len(name.encode()) > MAX_ROLE_BYTES:
        raise RoleError(
            f"the role name {name!r} is longer than PostgreSQL's {MAX_ROLE_BYTES} bytes:"
            " use a shorter database name"
        )
    return name


def service_url(database_url: str, service: str, password: str) -> str:
    """``database_url`` (its host, port, database and options) logged in as ``service``'s
    role instead of whoever the URL names."""
    role = role_name(database_of(database_url), service)
    return with_credentials(database_url, role, password)


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, as libpq's
    PQencryptPasswordConn makes it), so the password itself never crosses the wire in a
    statement that ``log_statement`` could write down. ASCII only: the server prepares
    other passwords with SASLprep, which this doesn't repeat."""
    if not password.isascii() or not password.isprintable():
        raise RoleError("database passwords must be printable ASCII")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Every kind of relation a migration can make, and the statement that hands it over.
# Indexes and the sequences of serial or identity columns go with their table.
_OWNED = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
_HAND_OVER = """DO $clientpress$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT c.relname, CASE c.relkind::text {cases} END AS kind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = {schema} AND c.relkind::text IN ({kinds})
          AND pg_get_userbyid(c.relowner) <> {role}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER %s %I.%I OWNER TO %I', item.kind, {schema}, item.relname, {role});
    END LOOP;
END
$clientpress$;"""


def script(database: str, passwords: Mapping[str, str]) -> str:
    """The SQL that makes (or updates) every service's role and gives it its schema, for
    the database administrator to run in ``database``: what :func:`provision` runs, and
    what ``python -m libs.common.provision database-sql`` prints for a server that runs
    it at its first start (the local Kubernetes overlay) or an operator's own tooling.
    Idempotent; it holds each password only as its verifier."""
    missing = [s for s in SERVICES if s not in passwords]
    if missing:
        names = ", ".join(f"{s.upper()}_DATABASE_PASSWORD" for s in missing)
        raise RoleError(f"set {names} (one secret per service)")
    cases = " ".join(f"WHEN {_literal(k)} THEN {_literal(v)}" for k, v in _OWNED.items())
    kinds = ", ".join(_literal(k) for k in _OWNED)
    # The services' search path ends with ``public``: before PostgreSQL 15 anyone could
    # create there, and so put a table or function in another service's way.
    statements = ["REVOKE CREATE ON SCHEMA public FROM PUBLIC;"]
    for service in SERVICES:
        role = role_name(database, service)
        statements += [
            f"-- {service}: the role {role}, owner of the schema {service} alone",
            "DO $clientpress$ BEGIN"
            f" IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(role)})"
            f" THEN CREATE ROLE {_ident(role)}; END IF; END $clientpress$;",
            f"ALTER ROLE {_ident(role)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            f" NOREPLICATION NOBYPASSRLS INHERIT PASSWORD"
            f" {_literal(scram_verifier(passwords[service]))};",
            f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)};",
            f"CREATE SCHEMA IF NOT EXISTS {_ident(service)} AUTHORIZATION {_ident(role)};",
            f"ALTER SCHEMA {_ident(service)} OWNER TO {_ident(role)};",
            f"REVOKE ALL ON SCHEMA {_ident(service)} FROM PUBLIC;",
            # What an earlier release (or a migration run as the administrator) made in it.
            _HAND_OVER.format(
                cases=cases, kinds=kinds, schema=_literal(service), role=_literal(role)
            ),
        ]
    return "\n".join(statements) + "\n"


async def provision(admin_url: str, passwords: Mapping[str, str]) -> list[str]:
    """Make (or update) every service's role and give it its schema; returns the roles.
    Idempotent: run it at installation and after every upgrade, as the broker's is."""
    database = database_of(admin_url)
    sql = script(database, passwords)
    await ensure_database(admin_url)
    # Exempt from a DBA's statement_timeout like ``migrate`` (MIGRATION_SESSION): waiting
    # for another run's turn is no runaway query (tests/faults/test_statement_timeout.py).
    conn = await asyncpg.connect(admin_url, timeout=10, server_settings=MIGRATION_SESSION)
    try:
        async with conn.transaction():
            # Two runs at once (replicas of a setup job) take turns.
            await xact_lock(conn, f"roles:{database}")
            await conn.execute(sql)
    finally:
        await conn.close()
    return [role_name(database, service) for service in SERVICES]


async def drop(admin_url: str) -> None:
    """Remove the roles of ``admin_url``'s database (after the database itself is gone,
    or with everything they own in it)."""
    database = database_of(admin_url)
    conn = await asyncpg.connect(
        urlunsplit(urlsplit(admin_url)._replace(path="/postgres")), timeout=10
    )
    try:
        for service in SERVICES:
            await conn.execute(f"DROP ROLE IF EXISTS {_ident(role_name(database, service))}")
    finally:
        await conn.close()
