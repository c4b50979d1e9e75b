"""Apply the broker's trust table (libs/common/broker.py) with administrator credentials,
and make the services' database roles (``database``, libs/common/database_roles.py).

``python -m libs.common.provision provision`` imports the definitions through the
management API (``BROKER_MANAGEMENT_URL``, default ``http://<AMQP host>:15672``), or,
when that isn't reachable and the broker runs on this machine, ``rabbitmqctl
import_definitions``. ``definitions`` prints the document instead, for a broker that
loads it at start (compose, the local Kubernetes overlay) or an operator's own tooling.
Passwords come from ``<SERVICE>_BROKER_PASSWORD`` and ``BROKER_INTEGRATIONS``; the queues'
bounds from ``BROKER_QUEUE_MAX_MESSAGES`` and ``BROKER_QUEUE_MAX_BYTES``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp
import asyncpg

from . import broker, database_roles


class ProvisionError(Exception):
    """The broker could not be provisioned; the message says why and what to do."""


def management_url(amqp_url: str, environ: Mapping[str, str] = os.environ) -> str:
    explicit = environ.get("BROKER_MANAGEMENT_URL", "")
    if explicit:
        return explicit.rstrip("/")
    parts = urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    host = parts.hostname or "127.0.0.1"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:15672"


def _admin_session(amqp_url: str) -> aiohttp.ClientSession:
    parts = urlsplit(amqp_url)
    auth = aiohttp.encode_basic_auth(
        unquote(parts.username or "guest"), unquote(parts.password or "guest")
    )
    return aiohttp.ClientSession(
        headers={"Authorization": auth}, timeout=aiohttp.ClientTimeout(total=30)
    )


async def apply(admin_amqp_url: str, document: dict[str, Any]) -> str:
    """Import ``document``; returns how ("management API" or "rabbitmqctl")."""
    api = management_url(admin_amqp_url)
    try:
        async with (
            _admin_session(admin_amqp_url) as http,
            http.post(f"{api}/api/definitions", json=document) as response,
        ):
            if response.status in (200, 201, 204):
                return "management API"
            text = (await response.text())[:300]
            raise ProvisionError(
                f"the broker's management API at {api} refused the definitions"
                f" ({response.status}: {text}); the AMQP_URL user must be an administrator"
            )
    except aiohttp.ClientConnectionError:
        pass
    if _local(admin_amqp_url) and shutil.which("rabbitmqctl"):
        await asyncio.to_thread(_rabbitmqctl_import, document)
        await _wait_until_usable(admin_amqp_url, document)
        return "rabbitmqctl"
    raise ProvisionError(
        f"can't reach RabbitMQ's management API at {api} to create the services' broker users:"
        " enable it (rabbitmq-plugins enable rabbitmq_management) or set BROKER_MANAGEMENT_URL"
    )


def _local(amqp_url: str) -> bool:
    return (urlsplit(amqp_url).hostname or "127.0.0.1") in {"127.0.0.1", "localhost", "::1"}


def _rabbitmqctl_import(document: dict[str, Any]) -> None:
    # On standard input: no file that the broker's own user must be able to read (and
    # nothing with password hashes left on disk).
    done = subprocess.run(
        ["rabbitmqctl", "import_definitions", "--format", "json"],  # noqa: S607
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise ProvisionError(f"rabbitmqctl import_definitions failed: {done.stderr[:300]}")


async def _wait_until_usable(admin_amqp_url: str, document: dict[str, Any]) -> None:
    """rabbitmqctl imports asynchronously: wait until the last topology item exists."""
    queues = document.get("queues") or []
    if not queues:
        return
    last = queues[-1]["name"]
    connection = await aio_pika.connect(admin_amqp_url, timeout=10)
    try:
        for _ in range(100):
            channel = await connection.channel()
            try:
                await channel.declare_queue(last, passive=True)
                return
            except aio_pika.exceptions.ChannelClosed:
                await asyncio.sleep(0.1)
    finally:
        await connection.close()
    raise ProvisionError("the broker did not finish importing the definitions in 10 s")


async def provision(
    admin_amqp_url: str,
    prefix: str,
    passwords: Mapping[str, str],
    integrations: Mapping[str, str] | None = None,
    limits: broker.QueueLimits | None = None,
) -> str:
    document = broker.definitions(
        prefix,
        passwords,
        integrations=integrations,
        vhost=broker.vhost_of(admin_amqp_url),
        limits=limits,
    )
    return await apply(admin_amqp_url, document)


async def remove_limits(admin_amqp_url: str, prefix: str) -> None:
    """Delete the policy that bounds a prefix's queues (a test run's, when it ends)."""
    api = management_url(admin_amqp_url)
    vhost = broker.vhost_of(admin_amqp_url)
    name = broker.limits_policy_name(prefix)
    try:
        async with (
            _admin_session(admin_amqp_url) as http,
            http.delete(f"{api}/api/policies/{quote(vhost, safe='')}/{quote(name, safe='')}") as r,
        ):
            if r.status not in (204, 404):
                raise ProvisionError(f"deleting broker policy {name}: {r.status}")
        return
    except aiohttp.ClientConnectionError:
        pass
    if _local(admin_amqp_url) and shutil.which("rabbitmqctl"):
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "clear_policy", "-p", vhost, name],
            capture_output=True,
            timeout=60,
            check=False,
        )


async def remove_users(admin_amqp_url: str, users: list[str]) -> None:
    """Delete broker users (a test run's, when it ends)."""
    api = management_url(admin_amqp_url)
    try:
        async with _admin_session(admin_amqp_url) as http:
            for user in users:
                async with http.delete(f"{api}/api/users/{quote(user, safe='')}") as response:
                    if response.status not in (204, 404):
                        raise ProvisionError(f"deleting broker user {user}: {response.status}")
        return
    except aiohttp.ClientConnectionError:
        pass
    if _local(admin_amqp_url) and shutil.which("rabbitmqctl"):
        for user in users:
            await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "delete_user", user],
                capture_output=True,
                timeout=60,
                check=False,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m libs.common.provision")
    parser.add_argument("command", choices=["provision", "definitions", "database", "database-sql"])
    parser.add_argument(
        "--admin-user",
        default=os.environ.get("BROKER_ADMIN_USER", ""),
        help="definitions: also define this administrator (password from BROKER_ADMIN_PASSWORD)",
    )
    args = parser.parse_args(argv)
    if args.command in ("database", "database-sql"):
        provision_database(print_only=args.command == "database-sql")
        return
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    prefix = os.environ.get("BUS_PREFIX", "clientpress")
    passwords = broker.passwords_from_env()
    missing = [s for s in broker.SERVICES if s not in passwords]
    if missing:
        names = ", ".join(f"{s.upper()}_BROKER_PASSWORD" for s in missing)
        print(f"clientpress: set {names} (one secret per service)", file=sys.stderr)
        raise SystemExit(2)
    integrations = broker.integrations_from_env()
    try:
        broker.check_integration_names(prefix, list(integrations))
        limits = broker.limits_from_env()
    except ValueError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "definitions":
        admin = None
        if args.admin_user:
            admin_password = os.environ.get("BROKER_ADMIN_PASSWORD", "")
            if not admin_password:
                print("clientpress: set BROKER_ADMIN_PASSWORD", file=sys.stderr)
                raise SystemExit(2)
            admin = (args.admin_user, admin_password)
        document = broker.definitions(
            prefix,
            passwords,
            integrations=integrations,
            vhost=broker.vhost_of(amqp_url),
            admin=admin,
            limits=limits,
        )
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    try:
        how = asyncio.run(provision(amqp_url, prefix, passwords, integrations, limits))
    except ProvisionError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    users = [broker.broker_user(prefix, s) for s in broker.SERVICES] + list(integrations)
    print(f"clientpress: broker users provisioned through the {how}: {', '.join(users)}")


def provision_database(*, print_only: bool) -> None:
    """``database``: every service's own role in DATABASE_URL's database (the
    administrator's URL), passwords from ``<SERVICE>_DATABASE_PASSWORD``; ``database-sql``
    prints the SQL instead (DATABASE_URL names the database only)."""
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/clientpress")
    passwords = broker.passwords_from_env(login="DATABASE")
    try:
        if print_only:
            sys.stdout.write(database_roles.script(database_roles.database_of(url), passwords))
            return
        roles = asyncio.run(database_roles.provision(url, passwords))
    except database_roles.RoleError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"clientpress: the database refused: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"clientpress: database roles provisioned, each owning its schema: {', '.join(roles)}")


if __name__ == "__main__":
    main()
