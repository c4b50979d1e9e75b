"""asyncpg pools per service schema, and the numbered-SQL migrations runner.

Each service owns one schema. Migrations are ``NNNN_name.sql`` files run in order inside
one transaction each, recorded in ``<schema>.schema_migrations``; a transaction-level
advisory lock keyed on the schema makes concurrent starts wait instead of racing, and a
lock timeout keeps a migration from queueing the running release's statements behind it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .email import email_key
from .logging import get_logger
from .tracing import enabled as tracing_enabled
from .tracing import watch_queries

log = get_logger(__name__)

# What handlers and repositories take: a plain connection or one borrowed from a pool.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection | PoolConnectionProxy

# What takes single statements, each its own transaction: a connection, or the pool itself
# (which lends one for the statement only, so nothing holds a connection in between).
if TYPE_CHECKING:
    Db: TypeAlias = Conn | asyncpg.Pool[asyncpg.Record]
else:
    Db = Conn | asyncpg.Pool

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    R = TypeVar("R", bound=DataclassInstance)
else:
    R = TypeVar("R")


def from_row(cls: type[R], row: asyncpg.Record | Mapping[str, Any], **converted: Any) -> R:
    """The dataclass ``cls`` from a row whose columns carry its field names; ``converted``
    gives the fields whose column needs converting first (an array to a tuple, JSON text)."""
    columns = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name not in converted}
    return cls(**columns, **converted)


def columns(items: Sequence[Any], *names: str) -> list[list[Any]]:
    """Many rows as the arrays of an ``unnest($1::…[], $2::…[], …)`` statement: for each
    attribute named, its value in every item, in order; without names, the items are
    tuples, and each position is a column."""
    if not names:
        return [list(column) for column in zip(*items, strict=True)]
    return [[getattr(item, name) for item in items] for name in names]


@asynccontextmanager
async def transaction(db: Db) -> AsyncIterator[Conn]:
    """One transaction on ``db``: given the pool, a connection is acquired for it; given a
    connection (a caller's transaction, such as a consumer's inbox transaction), a nested
    one (a savepoint), so the work commits or rolls back with the caller's."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


@asynccontextmanager
async def atomic(db: Db) -> AsyncIterator[Conn]:
    """One transaction on ``db`` without a savepoint: given a connection already in a
    transaction, that transaction as it is; else as :func:`transaction`. For a step whose
    failure fails the caller's whole transaction anyway (a consumer's effect beside its
    inbox row): two round trips fewer than a savepoint."""
    if not isinstance(db, asyncpg.Pool) and db.is_in_transaction():
        yield db
    else:
        async with transaction(db) as conn:
            yield conn


@asynccontextmanager
async def connection(db: Db) -> AsyncIterator[Conn]:
    """A connection for reads: one acquired from the pool, or the connection given."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


def utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]


@dataclass(frozen=True, kw_only=True)
class UseCaseDeps:
    """What every service's ``Deps`` holds (each service subclasses it, frozen too, adding
    its settings and clients): the database and the clock. Use cases take ``deps`` first
    and work on ``deps.db`` through ``transaction`` / ``connection``."""

    db: Db
    clock: Clock = utcnow

    def within(self, conn: Conn) -> Self:
        """The same dependencies on one connection: a consumer applies a use case inside
        its inbox transaction, so the effect and the inbox row commit together."""
        return dataclasses.replace(self, db=conn)


# The database is away (restarting, failing over, out of slots): worth waiting out, never
# the fault of the request or message at hand.
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # What a pooled connection says when the server went away in the middle of a query.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # A failover to a standby, or the primary demoted: writes are refused until the pool
    # reaches a writable server again (ReadOnlyWatch replaces the connections).
    asyncpg.ReadOnlySQLTransactionError,
    # Another session holds a lock this statement needs for longer than LOCK_WAIT_SECONDS
    # (a migration, an operator's LOCK TABLE, a long maintenance statement).
    asyncpg.LockNotAvailableError,
    # A statement cancelled by another session (pg_cancel_backend, a failover tool) or by
    # a server-side statement_timeout: rolled back, so trying again is safe, and giving up
    # on it is not (a mail sent but not recorded would be sent again).
    asyncpg.QueryCanceledError,
)

# How long a request waits for a pooled connection, and a statement for a lock, before it
# gives up (rolled back, answered 503): well within the gateway's 10 s for an internal
# call, so the service's own answer arrives first and a 503 means nothing was made.
# Without these bounds a lock held for 25 s queued requests in the pool without limit,
# and the gateway answered 503 for requests the service then carried out.
LOCK_WAIT_SECONDS = 4.0


class DatabaseReadOnly(Exception):
    """Readiness found the database refusing writes (a standby, or read-only by setting)."""


class ReadOnlyWatch:
    """A pool's query logger: a statement refused because the server is read-only expires
    every connection of the pool (at most once a second), so that the next ones are opened
    anew and reach the writable server once the failover is over. Without it a pool keeps
    the connections it opened to the standby, read-only for good, long after the primary
    is back (tests/faults/test_database.py)."""

    EVERY_SECONDS = 1.0

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self._expired_at = -self.EVERY_SECONDS
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, record: Any) -> None:
        if isinstance(record.exception, asyncpg.ReadOnlySQLTransactionError):
            self.expire()

    def expire(self) -> None:
        now = time.monotonic()
        if self.pool is None or now - self._expired_at < self.EVERY_SECONDS:
            return
        self._expired_at = now
        log.warning("database_read_only", action="reconnecting")
        task = asyncio.get_running_loop().create_task(self.pool.expire_connections())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def named(url: str, service: str) -> dict[str, str]:
    """The server settings that name a service's connections in ``pg_stat_activity`` (and
    ``%a`` in the server's log) as ``clientpress-<service>``, unless ``url`` names them
    itself (``?application_name=``): who holds the connection slots, at a glance."""
    if "application_name" in parse_qs(urlsplit(url).query):
        return {}
    return {"application_name": f"clientpress-{service}"}


# The code lowers addresses as Python does, a character at a time (email_key), and
# identity's unique index with PostgreSQL's lower(), which follows the database's locale:
# letters of four scripts, an "I" (a Turkish locale lowers it to a dotless i, U+0131) and
# a word-final sigma (ICU lowers it to U+03C2, Python's character at a time to U+03C3).
LOWER_CASE_PROBE = "IÄÉ ΟΣ Ж"


class DatabaseLocaleError(Exception):
    """The database lower-cases letters otherwise than the code: the message says how to
    create one that doesn't."""


async def check_lower_case(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Refuse a database whose ``lower()`` lowers otherwise than :func:`email_key`:
    LC_CTYPE ``C`` or ``POSIX`` (ASCII letters alone), the ICU locale provider (a final
    sigma, a Turkish "I"). There Ärger@example.com and ärger@example.com, or IVAN@ and
    ivan@ under Turkish rules, would be two accounts, and identity and invitations would
    disagree on who has one."""
    lowered = await conn.fetchval("SELECT lower($1::text)", LOWER_CASE_PROBE)
    expected = email_key(LOWER_CASE_PROBE)
    if lowered == expected:
        return
    # Read as JSON: the columns naming the locale differ between PostgreSQL versions.
    row = await conn.fetchval(
        "SELECT to_jsonb(d) - 'datacl' FROM pg_database d WHERE datname = current_database()"
    )
    database = json.loads(row) if isinstance(row, str) else dict(row)
    icu = database.get("datlocprovider") == "i"
    locale = (
        f"ICU locale {database.get('daticulocale') or database.get('datlocale')!r}"
        if icu
        else f"LC_CTYPE {database.get('datctype')!r}"
    )
    raise DatabaseLocaleError(
        f"the database {database.get('datname')!r} ({locale}) lower-cases letters otherwise"
        f" than ClientPress: lower({LOWER_CASE_PROBE!r}) is {lowered!r}, not {expected!r}."
        " Email addresses compare in any case (Ärger@example.com is ärger@example.com),"
        " so one inbox could become two accounts. Create the database with the libc locale"
        " provider and a UTF-8 LC_CTYPE, e.g. CREATE DATABASE ... TEMPLATE template0"
        " LOCALE_PROVIDER libc LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' (or en_US.UTF-8),"
        " then migrate."
    )


def _check_schema(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    return schema


class BoundedPool(asyncpg.Pool):
    """A pool whose ``acquire`` (and so ``fetch``, ``execute`` … on the pool) waits at
    most ``LOCK_WAIT_SECONDS`` for a free connection unless told otherwise: TimeoutError,
    one of DATABASE_AWAY, instead of a queue that grows while the database is stuck."""

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=LOCK_WAIT_SECONDS if timeout is None else timeout)


async def create_pool(
    url: str, schema: str, *, min_size: int = 2, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in the service's schema.

    ``command_timeout`` bounds every query, so a stalled database turns into an error
    (and a 503) rather than a hung request; ``lock_timeout`` and the pool's acquire
    (``BoundedPool``) bound what waits on a lock or a connection (``LOCK_WAIT_SECONDS``).
    A statement refused by a read-only server replaces the pool's connections
    (``ReadOnlyWatch``)."""
    watch = ReadOnlyWatch()

    async def init(conn: asyncpg.Connection[asyncpg.Record]) -> None:
        conn.add_query_logger(watch)
        if tracing_enabled():
            await watch_queries(conn)

    pool = await BoundedPool(
        url,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        loop=None,
        connect=None,
        setup=None,
        max_queries=50000,
        min_size=min_size,
        max_size=max_size,
        command_timeout=10,
        timeout=5,
        # Give idle connections back soon after a burst, so replicas don't hoard the
        # server's connection slots.
        max_inactive_connection_lifetime=60,
        server_settings={
            **named(url, schema),
            "search_path": f"{_check_schema(schema)},public",
            "lock_timeout": f"{int(LOCK_WAIT_SECONDS * 1000)}ms",
        },
        reset=keep_session,
        init=init,
    )
    assert pool is not None
    watch.pool = pool
    return pool


async def refuses_writes(db: Db) -> bool:
    """Whether a transaction on ``db`` would be read-only (a standby, or the database set
    so); on a pool, one found so also replaces the pool's connections, which may be
    left from a failover that is over."""
    read_only = bool(await db.fetchval("SELECT current_setting('transaction_read_only')::boolean"))
    if read_only and isinstance(db, asyncpg.Pool):
        await db.expire_connections()
    return read_only


async def keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset on release, which asyncpg runs after rolling back any open
    transaction and dropping listeners: nothing more. Our pooled connections hold no
    session state (locks are ``pg_advisory_xact_lock``, settings ``SET LOCAL``, LISTEN
    only on dedicated connections; tests/common/test_db.py keeps it so), so asyncpg's
    default reset query (unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) would be a round
    trip per checkout for nothing: about 5 % of a busy service's CPU in py-spy."""


# How long a listener's connection may take to answer its check (Listener.ensure).
LISTEN_CHECK_SECONDS = 3.0
# The check itself (what pg_stat_activity shows as the listener's last query).
LISTEN_CHECK = "SELECT pg_listening_channels()"


class Listener:
    """A ``LISTEN`` on a connection of its own (a pooled one would lose it when returned).

    ``ensure()`` opens it, or opens it again after the database dropped it or stopped
    answering (a black hole, found by a round trip), and is meant to be called at start
    and on every maintenance tick; a failure is logged as
    ``<name>_listen_failed`` and left to the next tick, since every listener here only
    hurries work that a poll finds anyway. ``close()`` ends it."""

    def __init__(
        self, dsn: str, channel: str, callback: Callable[..., None], *, name: str, service: str
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.callback = callback
        self.name = name
        self.service = service
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    async def ensure(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            if await self._answers():
                return
            # Open but silent (a black hole: the server gone without closing anything):
            # it would wait for notifications forever, so it is dropped and opened anew.
            log.warning(f"{self.name}_listen_lost", action="reconnecting")
            conn, self._conn = self._conn, None
            conn.terminate()
        try:
            self._conn = await asyncpg.connect(
                self.dsn, timeout=5, server_settings=named(self.dsn, self.service)
            )
            await self._conn.add_listener(self.channel, self.callback)
        except Exception as exc:
            log.warning(f"{self.name}_listen_failed", error=type(exc).__name__)
            await self.close()

    async def _answers(self) -> bool:
        """Whether the held connection answers a round trip within LISTEN_CHECK_SECONDS:
        nothing else tells a LISTEN connection whose server stopped answering (no TCP
        keepalive here, and it never sends a query of its own)."""
        assert self._conn is not None
        try:
            await self._conn.fetch(LISTEN_CHECK, timeout=LISTEN_CHECK_SECONDS)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close()


def load_migrations(*directories: Path) -> list[Migration]:
    """Common migrations (prefixed ``common_``) first, then the service's own."""
    found: list[Migration] = []
    for index, directory in enumerate(directories):
        prefix = "common_" if directory == COMMON_MIGRATIONS else ""
        for path in sorted(directory.glob("*.sql")):
            match = _NAME.match(path.name)
            if not match:
                raise ValueError(f"migration {path} is not named NNNN_name.sql")
            version = f"{index:02d}{prefix}{match.group(1)}"
            if any(m.version == version for m in found):
                # Same number twice (two branches each adding "the next" file): one would
                # be taken as applied and never run.
                raise ValueError(f"two migrations numbered {match.group(1)} in {directory}")
            found.append(
                Migration(
                    version=version,
                    name=path.name,
                    sql=path.read_text(),
                )
            )
    return found


class SchemaGate:
    """Readiness's question to the database: is it reachable, and has every migration this
    code ships been applied? Extra applied migrations (a newer release's additive ones,
    docs/deploying.md "expand, then contract") don't matter. Once the schema is current it
    stays so (migrations only add), and later checks are a plain round trip."""

    def __init__(self, schema: str, directory: Path) -> None:
        self.schema = _check_schema(schema)
        self.shipped = {m.version: m.name for m in load_migrations(COMMON_MIGRATIONS, directory)}
        self._current = False

    async def pending(self, db: Db) -> list[str]:
        """The shipped migrations not applied yet (empty when the schema is current);
        raises DatabaseReadOnly when the database refuses writes, since a service that can
        only read can't serve."""
        if await refuses_writes(db):
            raise DatabaseReadOnly
        if self._current:
            return []
        try:
            rows = await db.fetch(f"SELECT version FROM {self.schema}.schema_migrations")
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            rows = []
        applied = {row["version"] for row in rows}
        missing = [name for version, name in sorted(self.shipped.items()) if version not in applied]
        self._current = not missing
        return missing


def lock_key(name: str) -> int:
    """The advisory lock key of a name ("invitations:sweep"): 64 bits of its sha256."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def xact_lock(conn: Conn, name: str) -> None:
    """Wait for the named advisory lock; the transaction's end releases it."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))


async def try_xact_lock(conn: Conn, name: str) -> bool:
    """The named advisory lock if it is free (held until the transaction's end)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock_key(name)))


# How long a migration's statement waits for a table lock before it gives up and the file
# is tried again after a pause. During a rolling update the previous release keeps
# serving: a statement waiting for a lock (an ALTER behind a replica's open transaction)
# would queue every later statement on that table behind it, reads included, for as long
# as that transaction lasted. Below LOCK_WAIT_SECONDS, so the services' own statements
# queued behind it meanwhile are answered, not refused.
MIGRATION_LOCK_TIMEOUT_SECONDS = 2.0
# The pause after a lock wait given up, doubled each time up to this.
MIGRATION_RETRY_MAX_SECONDS = 30.0
# A migration's session is exempt from a DBA's ``statement_timeout`` on the database or
# role (meant for runaway queries): waiting for another run of the same schema, or an
# index built on a large table, is neither, and cancelling it failed the upgrade with
# "canceling statement due to statement timeout" (tests/faults/test_statement_timeout.py).
# Table locks stay bounded by the migration's own lock_timeout.
MIGRATION_SESSION = {"statement_timeout": "0"}


async def migrate(
    url: str,
    schema: str,
    directory: Path,
    *,
    lock_timeout: float = MIGRATION_LOCK_TIMEOUT_SECONDS,
) -> list[str]:
    """Apply pending migrations for one schema, each file in its own transaction (its
    locks are held for that file only, not for every release an upgrade crosses);
    returns the names applied. A file whose statement waits for a lock longer than
    ``lock_timeout`` is rolled back and tried again after a pause."""
    _check_schema(schema)
    await ensure_database(url)
    migrations = load_migrations(COMMON_MIGRATIONS, directory)
    applied: list[str] = []
    conn = await asyncpg.connect(
        url,
        timeout=10,
        server_settings={**named(url, schema), **MIGRATION_SESSION},
    )
    try:
        # Before anything is made: a schema migrated onto such a database is to move.
        await check_lower_case(conn)
        done = await _recorded(conn, schema)
        for migration in migrations:
            if migration.version in done:
                continue
            if await _apply_patiently(conn, schema, migration, lock_timeout):
                applied.append(migration.name)
    finally:
        await conn.close()
    log.info("migrations_applied", schema=schema, applied=applied)
    return applied


async def _apply_patiently(
    conn: asyncpg.Connection[asyncpg.Record], schema: str, migration: Migration, lock_timeout: float
) -> bool:
    pause = lock_timeout
    while True:
        try:
            return await _apply(conn, schema, migration, lock_timeout)
        except asyncpg.LockNotAvailableError:
            log.warning(
                "migration_lock_wait", schema=schema, migration=migration.name, retry_in=pause
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, MIGRATION_RETRY_MAX_SECONDS)


async def _as_schema_owner(conn: asyncpg.Connection[asyncpg.Record], schema: str) -> None:
    """For the rest of the transaction, act as the schema's owner (its service's own role,
    libs/common/database_roles.py) when the login is another that may: what a migration
    makes is then that role's, whoever runs it. Run as the administrator (``make migrate``,
    a restore by hand), a new table was the administrator's, and the service, logging in
    as its role, could not use it."""
    owner = await conn.fetchval(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1"
        " AND nspowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        " AND pg_has_role(current_user, nspowner, 'MEMBER')",
        schema,
    )
    if owner:
        await conn.execute("SET LOCAL ROLE " + '"' + str(owner).replace('"', '""') + '"')


async def _recorded(conn: asyncpg.Connection[asyncpg.Record], schema: str) -> set[str]:
    """The schema and its ``schema_migrations`` (made on the first run), and the versions
    recorded there: a current schema is read once, not file by file."""
    async with conn.transaction():
        await xact_lock(conn, f"migrate:{schema}")
        # A service's own role may not create schemas (libs/common/database_roles.py made
        # it its schema), and CREATE SCHEMA IF NOT EXISTS checks that right first.
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
        ):
            await conn.execute(f"CREATE SCHEMA {schema}")
        await _as_schema_owner(conn, schema)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")
    return {row["version"] for row in rows}


async def _apply(
    conn: asyncpg.Connection[asyncpg.Record], schema: str, migration: Migration, lock_timeout: float
) -> bool:
    """Apply one migration unless it is recorded as applied (by a concurrent run since
    ``_recorded``); True if it was applied."""
    async with conn.transaction():
        # Concurrent runs (replicas starting together) take turns, file by file; the
        # lock timeout below does not apply to this wait.
        await xact_lock(conn, f"migrate:{schema}")
        await _as_schema_owner(conn, schema)
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        if await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
            migration.version,
        ):
            return False
        await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )
    return True


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist yet (first run)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        admin = urlunsplit(parts._replace(path="/postgres"))
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await conn.close()
        return
    await conn.close()
