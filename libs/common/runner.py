"""``python -m services.<name> [serve|migrate]``: the shared entrypoint."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from .db import DatabaseLocaleError, migrate
from .logging import configure_logging, get_logger, log_loop_exception
from .protocol import server_options
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

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_once(loop: asyncio.AbstractEventLoop, log: Any) -> None:
    """The first SIGINT or SIGTERM stops the service gracefully (aiohttp's GracefulExit);
    the rest are noted and ignored. Ctrl-C on ``make run`` reaches every process of the
    group and the supervisor then sends SIGTERM too: aiohttp's own handlers let that
    second signal break into the shutdown the first had begun, leaving tasks half closed
    (a service hung until killed), or, once the shutdown had removed them, kill the
    process (exit -15)."""
    stopping = False

    def stop(name: str) -> None:
        nonlocal stopping
        if stopping:
            log.info("signal_ignored_while_stopping", signal=name)
            return
        stopping = True
        log.info("service_stopping", signal=name)
        raise web.GracefulExit()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig.name)


# Set when the hard limit is "unlimited": a soft limit has to be a number, and a million
# connections is past what one process's memory would hold anyway.
OPEN_FILES_WHEN_UNLIMITED = 1 << 20


def raise_open_files_limit() -> None:
    """Each connection is a file descriptor, and a process started from a shell or in a
    container (Docker 25 and later) gets a soft limit of 1,024: one client holding a
    thousand connections open would leave no room for anyone else. The soft limit goes up
    to the hard one, which only the operator sets (as Go's runtime does at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


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
        try:
            asyncio.run(migrate(settings.service_database_url(service), schema, migrations))
        except DatabaseLocaleError as exc:
            print(f"clientpress: {service}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
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
    raise_open_files_limit()
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info("service_starting", host=host, port=port, open_files=open_files)
    # Health, readiness and metrics on a port of their own, on the same host, from the
    # start (while the database is waited for).
    serve_management(app, host, settings.management_port(service), serving=port)
    loop = asyncio.new_event_loop()
    # "Task exception was never retrieved" and the like: a JSON line, not stderr's text.
    loop.set_exception_handler(log_loop_exception)
    stop_once(loop, log)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=20,
        handle_signals=False,  # stop_once's
        loop=loop,
        **server_options(settings.http_head_timeout_seconds),
    )
    for sig in STOP_SIGNALS:  # the loop is closed: a late one must not kill what's left
        signal.signal(sig, signal.SIG_IGN)
    if stop_tracing is not None:
        stop_tracing()  # sends the spans still in the batch
    log.info("service_stopped")
