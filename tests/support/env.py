"""Per-run isolation: a fresh database and a fresh bus prefix, from the environment or the
local servers (DESIGN.md defaults)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

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
