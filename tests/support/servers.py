"""Where the tests' PostgreSQL and RabbitMQ come from, and how a test stops, starts and
administers them. In order: the URLs in the environment (``TEST_DATABASE_URL`` /
``TEST_AMQP_URL``, else ``DATABASE_URL`` / ``AMQP_URL``); else containers started with
testcontainers when a Docker engine answers; else the servers on this machine (the
README's setup). ``TEST_SERVERS=local`` or ``TEST_SERVERS=containers`` forces a choice.
The pytest header says which was used."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES_IMAGE = "postgres:15"
RABBITMQ_IMAGE = "rabbitmq:3.13-management"
# Several stacks of five services run at once in the suite (ten for the replicas test).
MAX_CONNECTIONS = "600"
LOOPBACK = ("127.", "localhost", "::1")


class ServerControlError(RuntimeError):
    """A test asked to stop or administer a server this run doesn't control."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "").startswith(LOOPBACK)


@dataclass
class Servers:
    """The run's two servers: their URLs, and the few operations tests perform on them
    (stop and start PostgreSQL, ``rabbitmqctl`` on the broker)."""

    origin: str  # "environment", "testcontainers" or "local servers"
    database_url: str
    amqp_url: str
    management_url: str | None = None
    _containers: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        db = urlsplit(self.database_url)
        amqp = urlsplit(self.amqp_url)
        return (
            f"servers: {self.origin} (PostgreSQL {db.hostname}:{db.port}, "
            f"RabbitMQ {amqp.hostname}:{amqp.port})"
        )

    # --- RabbitMQ -------------------------------------------------------------------
    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl args`` against the run's broker; returns its output."""
        container = self._containers.get("rabbitmq")
        if container is not None:
            code, output = container.exec(["rabbitmqctl", *args])
            text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
            if code != 0:
                raise subprocess.CalledProcessError(code, ["rabbitmqctl", *args], text)
            return text
        self._need_local("RabbitMQ", self.amqp_url, "rabbitmqctl")
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True
        )
        return done.stdout

    @property
    def broker_is_local(self) -> bool:
        """The broker runs on this machine, so provisioning may fall back to rabbitmqctl."""
        return "rabbitmq" not in self._containers and _is_loopback(self.amqp_url)

    # --- PostgreSQL -----------------------------------------------------------------
    def stop_postgres(self) -> None:
        container = self._containers.get("postgres")
        if container is not None:
            # The image stops with SIGINT: PostgreSQL's fast shutdown, as `-m fast` here.
            container.get_wrapped_container().stop(timeout=60)
            return
        self._cluster("stop", "-m", "fast")

    def start_postgres(self) -> None:
        container = self._containers.get("postgres")
        if container is not None:
            container.get_wrapped_container().start()
            _wait_for_postgres(self.database_url)
            return
        self._cluster("start")

    def ensure_postgres_started(self) -> None:
        container = self._containers.get("postgres")
        if container is not None:
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status != "running":
                self.start_postgres()
            return
        if self._local_cluster()[2] != "online":
            self._cluster("start")

    def _local_cluster(self) -> tuple[str, str, str]:
        """The version, name and status of the cluster on this machine that listens on
        the database URL's port (``pg_lsclusters``)."""
        self._need_local("PostgreSQL", self.database_url, "pg_lsclusters")
        port = str(urlsplit(self.database_url).port or 5432)
        listed = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
        ).stdout
        for line in listed.splitlines():
            version, name, cluster_port, status, *_ = line.split()
            if cluster_port == port:
                return version, name, status
        raise ServerControlError(f"no PostgreSQL cluster on this machine listens on {port}")

    def _cluster(self, action: str, *flags: str) -> None:
        version, name, _ = self._local_cluster()
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action, *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def _need_local(self, server: str, url: str, tool: str) -> None:
        if not _is_loopback(url) or shutil.which(tool) is None:
            raise ServerControlError(
                f"this test stops or administers {server}, which it can do for containers "
                f"it started or a server on this machine (with {tool}); {url} is neither"
            )

    def stop_containers(self) -> None:
        for container in reversed(list(self._containers.values())):
            container.stop()
        self._containers.clear()


# --- choosing ----------------------------------------------------------------------
def _from_environment() -> Servers | None:
    database = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    amqp = os.environ.get("TEST_AMQP_URL") or os.environ.get("AMQP_URL")
    if not database and not amqp:
        return None
    return Servers(
        "environment",
        database or LOCAL_DATABASE_URL,
        amqp or LOCAL_AMQP_URL,
        os.environ.get("BROKER_MANAGEMENT_URL"),
    )


def docker_engine_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # testcontainers' dependency
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, no daemon: all mean "not reachable"
        return False


def _start_containers() -> Servers:
    from testcontainers.core.container import DockerContainer

    pg_port, amqp_port, http_port = _free_port(), _free_port(), _free_port()
    # Fixed host ports, so a container stopped and started by a fault test comes back
    # where the services look for it.
    postgres = (
        DockerContainer(POSTGRES_IMAGE)
        .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_command(f"postgres -c max_connections={MAX_CONNECTIONS}")
        .with_bind_ports(5432, pg_port)
    )
    rabbitmq = (
        DockerContainer(RABBITMQ_IMAGE)
        .with_bind_ports(5672, amqp_port)
        .with_bind_ports(15672, http_port)
    )
    servers = Servers(
        "testcontainers",
        f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
        f"amqp://guest:guest@127.0.0.1:{amqp_port}/",
        f"http://127.0.0.1:{http_port}",
    )
    servers._containers["postgres"] = postgres.start()
    servers._containers["rabbitmq"] = rabbitmq.start()
    atexit.register(servers.stop_containers)
    _wait_for_postgres(servers.database_url)
    _wait_for_management(servers.management_url or "")
    return servers


def _wait_for_postgres(url: str, timeout: float = 120) -> None:
    """Until the server takes a query (the image restarts once after its first setup)."""
    import asyncio

    import asyncpg

    async def ready() -> bool:
        try:
            connection = await asyncpg.connect(url, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        try:
            await connection.fetchval("SELECT 1")
            return True
        finally:
            await connection.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(ready()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"PostgreSQL at {url} was not ready in {timeout:.0f} s")


def _wait_for_management(url: str, timeout: float = 120) -> None:
    request = urllib.request.Request(f"{url}/api/overview")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=3) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"RabbitMQ's management API at {url} was not ready in {timeout:.0f} s")


def choose(wanted: str | None = None) -> Servers:
    wanted = wanted if wanted is not None else os.environ.get("TEST_SERVERS", "")
    if wanted not in ("", "local", "containers"):
        raise ValueError(f"TEST_SERVERS must be local or containers, not {wanted!r}")
    found = _from_environment()
    if found is not None:
        return found
    if wanted == "containers" and not docker_engine_reachable():
        raise RuntimeError(
            "TEST_SERVERS=containers, but no Docker engine answers"
            f" (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')})"
        )
    if wanted == "containers" or (wanted == "" and docker_engine_reachable()):
        return _start_containers()
    return Servers("local servers", LOCAL_DATABASE_URL, LOCAL_AMQP_URL)


_current: Servers | None = None


def current() -> Servers:
    """The run's servers, chosen (and containers started) on first use. The choice is
    exported to the environment, so the services the tests start as processes, and
    provisioning (BROKER_MANAGEMENT_URL), use the same servers."""
    global _current
    if _current is None:
        _current = choose()
        if _current.origin == "testcontainers":
            os.environ["TEST_DATABASE_URL"] = _current.database_url
            os.environ["TEST_AMQP_URL"] = _current.amqp_url
            os.environ["BROKER_MANAGEMENT_URL"] = _current.management_url or ""
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop_containers()
        _current = None
