"""``python -m services.<name> [serve|migrate]``: the shared entrypoint."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from .db import migrate
from .logging import configure_logging, get_logger
from .settings import (
    CommonSettings,
    ConfigError,
    check_broker_user,
    load_or_exit,
    refuse_known_secrets,
)
from .tracing import configure_tracing
from .web import serve_management

S = TypeVar("S", bound=CommonSettings)


def main(
    service: str,
    settings_cls: type[S],
    create_app: Callable[[S], web.Application],
    *,
    schema: str | None,
    migrations: Path | None,
    argv: list[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = load_or_exit(settings_cls)
    configure_logging(service, settings.log_level)
    log = get_logger(service)
    if args.command == "migrate":
        if schema is None or migrations is None:
            log.info("no_migrations", service=service)
            return
        asyncio.run(migrate(settings.database_url, schema, migrations))
        return
    try:
        check_broker_user(settings, service)
        refuse_known_secrets(settings)
    except ConfigError as exc:
        print(f"clientpress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        pass
    host, port = settings.listen(service)
    # Before anything is built or connects: pools and middleware ask whether traces are on.
    stop_tracing = configure_tracing(service, settings.otel_exporter_otlp_endpoint)
    try:
        # Checks what settings alone can't, e.g. the service keys against PUBLIC_URL.
        app = create_app(settings)
    except ConfigError as exc:
        print(f"clientpress: {service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("service_starting", host=host, port=port)
    # Health, readiness and metrics on a port of their own, on the same host.
    app.cleanup_ctx.append(serve_management(host, settings.management_port(service)))
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=20,
        handle_signals=True,
    )
    if stop_tracing is not None:
        stop_tracing()  # sends the spans still in the batch
    log.info("service_stopped")
