"""Per-run isolation: a fresh database and a fresh bus prefix, from the environment or the
local servers (DESIGN.md defaults)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

BASE_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL",
    os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
AMQP_URL = os.environ.get(
    "TEST_AMQP_URL", os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
)

SCHEMAS = ("identity", "portals", "invitations", "mailer")
CONSUMERS = ("portals", "invitations", "mailer", "gateway")


@dataclass(frozen=True)
class TestEnv:
    __test__ = False  # not a test class, despite the name

    database_url: str
    admin_url: str
    database_name: str
    amqp_url: str
    bus_prefix: str

    def service_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "ADMIN_"))}
        env.update(
            DATABASE_URL=self.database_url,
            AMQP_URL=self.amqp_url,
            BUS_PREFIX=self.bus_prefix,
            LOG_LEVEL="info",
        )
        env.update(extra)
        return env


def new_test_env() -> TestEnv:
    run = uuid.uuid4().hex[:10]
    parts = urlsplit(BASE_DATABASE_URL)
    name = f"cp_test_{run}"
    return TestEnv(
        database_url=urlunsplit(parts._replace(path=f"/{name}")),
        admin_url=urlunsplit(parts._replace(path="/postgres")),
        database_name=name,
        amqp_url=AMQP_URL,
        bus_prefix=f"cptest-{run}",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def provisioned(env: TestEnv) -> AsyncIterator[TestEnv]:
    """Create the env's database; afterwards drop it and every queue and exchange of its
    bus prefix, so runs never see each other's data."""
    admin = await asyncpg.connect(env.admin_url)
    await admin.execute(f'CREATE DATABASE "{env.database_name}"')
    await admin.close()
    try:
        yield env
    finally:
        await drop_bus(env)
        admin = await asyncpg.connect(env.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{env.database_name}" WITH (FORCE)')
        await admin.close()


async def drop_bus(env: TestEnv) -> None:
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        names = [*CONSUMERS, "identity"] + [f"probe{i}" for i in range(4)]
        for name in names:
            for queue in (f"{env.bus_prefix}.{name}", f"{env.bus_prefix}.{name}.dead"):
                await channel.queue_delete(queue)
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{env.bus_prefix}.{kind}")
    finally:
        await connection.close()
