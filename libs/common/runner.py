"""``python -m services.<name> [serve|migrate]``: the shared entrypoint."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from .db import migrate
from .logging import configure_logging, get_logger
from .settings import CommonSettings, load_or_exit

S = TypeVar("S", bound=CommonSettings)


def main(
    service: str,
    settings_cls: type[S],
    create_app: Callable[[S], web.Application],
    *,
    schema: str | None,
    migrations: Path | None,
    listen: Callable[[S], tuple[str, int]],
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
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        pass
    host, port = listen(settings)
    log.info("service_starting", host=host, port=port)
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=20,
        handle_signals=True,
    )
    log.info("service_stopped")
