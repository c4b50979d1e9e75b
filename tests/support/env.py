"""Per-run isolation: a fresh database, a fresh bus prefix and fresh service keys, on the
run's servers (tests/support/servers.py: the environment's, containers, or the local ones)."""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg

from libs.common import broker, database_roles
from libs.common.provision import provision, remove_limits, remove_users
from libs.common.service_auth import (
    HEADER,
    ServiceKeys,
    TokenSigner,
    compose_variable,
    encode_private,
    generate,
    parse_private_key,
    parse_public_table,
    public_table_text,
)

from .servers import current as current_servers

SCHEMAS = ("identity", "portals", "invitations", "mailer")
# Every service with a queue of its own on the bus.
CONSUMERS = ("identity", "portals", "invitations", "invitations.requests", "mailer", "gateway")
# The queues tests declare for consumers of their own (probe0, probe1, …), dropped with the
# run's bus (tests/common/test_drop_bus.py checks that every name a test uses is here).
PROBE_QUEUES = tuple(f"probe{i}" for i in range(20))


class Keyring:
    """Fresh Ed25519 keys for the five services, made once per test run."""

    def __init__(self) -> None:
        keys = generate()
        self.private = {name: encode_private(key) for name, key in keys.items()}
        self.public_table = public_table_text(keys)
        self._signers: dict[str, TokenSigner] = {}

    def settings(self, service: str) -> dict[str, str]:
        """Settings fields for an in-process ``service`` (its own key, every public key)."""
        return {"service_key": self.private[service], "service_public_keys": self.public_table}

    def env(self) -> dict[str, str]:
        """Process environment: the public table, and each service's key under the name
        compose uses (tests/support/processes.py hands a process only its own)."""
        env = {compose_variable(name): key for name, key in self.private.items()}
        env["SERVICE_PUBLIC_KEYS"] = self.public_table
        return env

    def signer(self, caller: str) -> TokenSigner:
        if caller not in self._signers:
            keys = ServiceKeys(
                caller,
                parse_private_key(self.private[caller]),
                parse_public_table(self.public_table),
            )
            self._signers[caller] = TokenSigner(keys)
        return self._signers[caller]

    def headers(self, caller: str, audience: str) -> dict[str, str]:
        """``Authorization: Service <token>``: ``caller``'s proof for a call to ``audience``."""
        return self.signer(caller).headers_for(audience)

    def client_middleware(self, caller: str, audience: str) -> aiohttp.ClientMiddlewareType:
        """An aiohttp client middleware that adds a fresh proof to every request that has
        no Authorization header of its own (``ClientSession(middlewares=[...])``)."""
        signer = self.signer(caller)

        async def middleware(
            request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            if HEADER not in request.headers:
                request.headers.update(signer.headers_for(audience))
            return await handler(request)

        return middleware


@dataclass(frozen=True)
class TestEnv:
    __test__ = False  # not a test class, despite the name

    database_url: str
    admin_url: str
    database_name: str
    amqp_url: str  # the administrator's: provisions, and acts as "another program"
    bus_prefix: str
    broker_passwords: dict[str, str] = field(default_factory=broker.new_passwords)
    integration_password: str = field(default_factory=lambda: broker.new_passwords(["x"])["x"])
    # Each service logs in to the database as its own role, as deployments do
    # (libs/common/database_roles.py), so every test with services checks they need no more.
    database_passwords: dict[str, str] = field(default_factory=broker.new_passwords)

    @property
    def integration_user(self) -> str:
        return f"{self.bus_prefix}-crm"

    keys: Keyring = field(default_factory=Keyring)

    def service_env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SMTP_", "ADMIN_", "SERVICE_", "CLIENTPRESS_"))
        }
        env.update(
            DATABASE_URL=self.database_url,
            AMQP_URL=self.amqp_url,
            BUS_PREFIX=self.bus_prefix,
            LOG_LEVEL="info",
            **self.keys.env(),
        )
        for service, password in self.broker_passwords.items():
            env[f"{service.upper()}_BROKER_PASSWORD"] = password
        for service, password in self.database_passwords.items():
            env[f"{service.upper()}_DATABASE_PASSWORD"] = password
        env.update(extra)
        return env

    def database_url_as(self, service: str) -> str:
        """The database as one service's own role (what that service may do, and no more)."""
        return database_roles.service_url(
            self.database_url, service, self.database_passwords[service]
        )

    def amqp_url_as(self, service: str) -> str:
        """The broker as one service's own user (publishing as that service)."""
        return broker.with_credentials(
            self.amqp_url,
            broker.broker_user(self.bus_prefix, service),
            self.broker_passwords[service],
        )

    @property
    def integration_url(self) -> str:
        """The broker as the example integration (publish invitation.requested only)."""
        return broker.with_credentials(
            self.amqp_url, self.integration_user, self.integration_password
        )


def new_test_env() -> TestEnv:
    run = uuid.uuid4().hex[:10]
    servers = current_servers()
    parts = urlsplit(servers.database_url)
    name = f"cp_test_{run}"
    return TestEnv(
        database_url=urlunsplit(parts._replace(path=f"/{name}")),
        admin_url=urlunsplit(parts._replace(path="/postgres")),
        database_name=name,
        amqp_url=servers.amqp_url,
        bus_prefix=f"cptest-{run}",
    )


# Ports for the services a test starts come from below the kernel's ephemeral range: a
# port from bind(0) is an ephemeral one, which an outgoing connection of any process (to
# PostgreSQL, to the broker) could take as its local end before the service binds it, and
# the service then failed to start ("address already in use").
LISTEN_PORTS_FROM = 20000
# Never the same port twice in a run: one handed out may not be bound yet.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on and not handed out before in this run, outside the
    ephemeral range where there is room."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_from = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_from = 0
    for _ in range(200 if ephemeral_from > LISTEN_PORTS_FROM + 1000 else 0):
        port = random.randrange(LISTEN_PORTS_FROM, ephemeral_from)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
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
    await database_roles.provision(env.database_url, env.database_passwords)
    await provision(
        env.amqp_url,
        env.bus_prefix,
        env.broker_passwords,
        {env.integration_user: env.integration_password},
    )
    try:
        yield env
    finally:
        await drop_bus(env)
        await remove_limits(env.amqp_url, env.bus_prefix)
        await remove_users(
            env.amqp_url,
            [broker.broker_user(env.bus_prefix, s) for s in broker.SERVICES]
            + [env.integration_user],
        )
        admin = await asyncpg.connect(env.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{env.database_name}" WITH (FORCE)')
        await admin.close()
        await database_roles.drop(env.database_url)


async def drop_bus(env: TestEnv) -> None:
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        names = [*CONSUMERS, *PROBE_QUEUES]
        for name in names:
            for queue in (f"{env.bus_prefix}.{name}", f"{env.bus_prefix}.{name}.dead"):
                await channel.queue_delete(queue)
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{env.bus_prefix}.{kind}")
    finally:
        await connection.close()
