"""What the libraries log through the standard library's ``logging`` (asyncio, aiohttp,
aio_pika and aiormq, Python's warnings), as a real service process writes it: each line
one JSON object with the service and the logger's name, secrets masked, nothing on
stderr's plain text. A platform's log pipeline (Loki, Elasticsearch, CloudWatch) reads
the lines one by one: a traceback over twenty lines was twenty records of garbage, and a
password in a DSN went in as it was."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from libs.common.broker import broker_user
from tests.support.env import TestEnv, free_port, new_test_env
from tests.support.processes import ROOT, ServiceProcess, own_key_only, run_migrations
from tests.support.servers import current as current_servers

pytestmark = pytest.mark.e2e

# The portals service as ``python -m services.portals`` runs it (the same runner, loop and
# logging), with a start-up hook doing what a bug in a dependency would: a client session
# never closed, a task whose exception nobody retrieves (its message naming a DSN with its
# password), a Python warning, and a library's error with a traceback.
PROVOKING = textwrap.dedent(
    """
    import asyncio, gc, logging, sys, warnings

    import aiohttp

    from libs.common.runner import main
    from services.portals.app import MIGRATIONS, SCHEMA, SERVICE, create_app
    from services.portals.settings import PortalsSettings

    DSN = sys.argv[1]

    async def lose_connection():
        raise ConnectionError(f"connection to {DSN} lost")

    def provoking(settings):
        app = create_app(settings)

        async def provoke(app):
            aiohttp.ClientSession()
            task = asyncio.ensure_future(lose_connection())
            await asyncio.sleep(0.05)
            del task
            gc.collect()
            warnings.warn(f"this setting goes away: {DSN}", UserWarning)
            try:
                raise ValueError(f"bad request to http://api.example/x?token={DSN[-12:]}")
            except ValueError:
                logging.getLogger("aiohttp.server").exception("Error handling request")
            logging.getLogger("aiohttp.client").warning(
                "retrying with headers %s", {"Authorization": f"Bearer {DSN[-12:]}"}
            )

        app.on_startup.append(provoke)
        return app

    main(SERVICE, PortalsSettings, provoking, schema=SCHEMA, migrations=MIGRATIONS, argv=[])
    """
)


class ProvokedPortals(ServiceProcess):
    """The portals process started with PROVOKING instead of ``-m services.portals``."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", PROVOKING, self.env["DATABASE_URL"]]


def _with_password(url: str, password: str) -> str:
    """The test database's URL with a password in it (the server trusts local
    connections, so it works as it is, as an operator's DATABASE_URL would)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def portals(migrated_schemas: TestEnv) -> AsyncIterator[tuple[ServiceProcess, list[str]]]:
    password = "pg-" + secrets.token_hex(8)
    env = migrated_schemas.service_env(
        DATABASE_URL=_with_password(migrated_schemas.database_url, password)
    )
    await asyncio.to_thread(run_migrations, env, ("portals",))
    process = ProvokedPortals("portals", free_port(), env)
    process.log_path.unlink(missing_ok=True)
    process.start()
    try:
        await process.wait_ready()
        yield process, [password, migrated_schemas.broker_passwords["portals"]]
    finally:
        await asyncio.to_thread(process.stop)


def _broker_connections(user: str) -> list[str]:
    listed = current_servers().rabbitmqctl("list_connections", "pid", "user", "--no-table-headers")
    return [
        line.rsplit("\t", 1)[0]
        for line in listed.splitlines()
        if "\t" in line and line.rsplit("\t", 1)[1].strip() == user
    ]


async def test_every_line_a_service_writes_is_one_json_object_without_secrets(
    portals: tuple[ServiceProcess, list[str]], migrated_schemas: TestEnv
) -> None:
    service, secret_values = portals
    # The broker goes away (it closes the service's connection) and the service comes
    # back to it: aio_pika and aiormq log the loss and the reconnection.
    user = broker_user(migrated_schemas.bus_prefix, "portals")
    names = await asyncio.to_thread(_broker_connections, user)  # their pids
    assert names, "the service holds no broker connection"
    for name in names:
        await asyncio.to_thread(
            current_servers().rabbitmqctl, "close_connection", name, "probe: broker restarting"
        )
    for _ in range(300):
        if set(await asyncio.to_thread(_broker_connections, user)) - set(names):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the service never reconnected: " + service.log_tail())
    # A request aiohttp's parser refuses.
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n")
        raw.recv(4096)
    code = await asyncio.to_thread(service.stop)
    assert code == 0, service.log_tail()

    lines = service.log_path.read_text(errors="replace").splitlines()
    not_json: list[str] = []
    entries: list[dict[str, Any]] = []
    for line in lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            not_json.append(line)
            continue
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            not_json.append(line)
    leaked = [line for line in lines if any(s in line for s in secret_values)]
    assert not not_json, "\n".join(not_json[:40])
    assert not leaked, "\n".join(leaked)
    # Each line says which service wrote it and at which level; a library's says which
    # of its loggers.
    assert all(e.get("service") == "portals" and e.get("level") for e in entries)
    by_logger = {e.get("logger") for e in entries}
    assert {"asyncio", "py.warnings", "aiohttp.server", "aiohttp.client"} <= by_logger
    never_retrieved = next(e for e in entries if "never retrieved" in e["event"])
    assert never_retrieved["level"] == "error"
    assert "ConnectionError: connection to postgresql://" in never_retrieved["exception"]
    assert ":[redacted]@" in never_retrieved["exception"]
    unclosed = next(e for e in entries if e["event"].startswith("Unclosed client session"))
    assert unclosed["logger"] == "asyncio"
    server_error = next(e for e in entries if e.get("logger") == "aiohttp.server")
    assert "token=[redacted]" in server_error["exception"]
    client = next(e for e in entries if e.get("logger") == "aiohttp.client")
    assert "'Authorization': '[redacted]'" in client["event"]
    # The service's own events are as they were.
    assert {"service_starting", "service_stopped"} <= {e["event"] for e in entries}


def test_a_migration_that_cannot_reach_the_database_fails_in_one_json_line() -> None:
    """``python -m services.portals migrate`` against a database that refuses the
    connection: the uncaught exception was Python's traceback on stderr, 51 lines of
    plain text for a log pipeline."""
    password = "pg-" + secrets.token_hex(8)
    env = own_key_only(
        new_test_env().service_env(
            DATABASE_URL=f"postgresql://clientpress:{password}@127.0.0.1:1/clientpress"
        ),
        "portals",
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.portals", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "", done.stderr[:2000]
    [line] = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert (line["event"], line["level"], line["service"]) == (
        "uncaught_exception",
        "critical",
        "portals",
    )
    assert "ConnectionRefusedError" in line["exception"]
    assert password not in done.stdout
