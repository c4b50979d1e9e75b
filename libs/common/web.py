"""The aiohttp app kit: typed app keys, request context and error middlewares, health,
readiness and metrics routes, JSON helpers, and cleanup contexts for pool, bus and relay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from .bus import Binding, Bus, Consumer, Handler
from .context import (
    CORRELATION_HEADER,
    REQUEST_ID_HEADER,
    clean_incoming_id,
    new_id,
    set_correlation_id,
)
from .db import DATABASE_AWAY, create_pool
from .errors import DomainError, InvalidInput, RateLimited
from .logging import get_logger
from .metrics import HTTP_LATENCY, HTTP_REQUESTS
from .outbox import OutboxRelay
from .settings import CommonSettings

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

SERVICE = web.AppKey("service", str)
POOL = web.AppKey("pool", asyncpg.Pool)
BUS = web.AppKey("bus", Bus)
RELAY = web.AppKey("relay", OutboxRelay)
CONSUMER = web.AppKey("consumer", Consumer)

# Errors that mean "a dependency is down": answered 503, never a 500 with a trace.
UNAVAILABLE_ERRORS = DATABASE_AWAY


def _json_default(value: Any) -> Any:
    # asyncpg returns its own UUID type, which orjson does not know; str() is its canonical form.
    if hasattr(value, "hex") and type(value).__name__ == "UUID":
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_json_default)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        field = ".".join(str(p) for p in err["loc"] if p != "__root__") or "body"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, or raise InvalidInput with a readable message."""
    try:
        raw = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidInput("The request body must be JSON.", code="invalid_json") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc)) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc)) from None


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def context_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    request_id = clean_incoming_id(request.headers.get(REQUEST_ID_HEADER)) or new_id()
    correlation_id = clean_incoming_id(request.headers.get(CORRELATION_HEADER)) or request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    set_correlation_id(correlation_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_name(request)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers[CORRELATION_HEADER] = correlation_id
    return response


@web.middleware
async def json_error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason)
    except RateLimited as exc:
        return error_response(
            exc.status, exc.code, exc.message, {"Retry-After": str(exc.retry_after)}
        )
    except DomainError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except UNAVAILABLE_ERRORS as exc:
        log.warning("dependency_unavailable", error=type(exc).__name__)
        return error_response(
            503, "unavailable", "The service is temporarily unavailable.", {"Retry-After": "2"}
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal", "Something went wrong on our side.")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "service": request.app[SERVICE]})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    app = request.app
    if POOL in app:
        try:
            await asyncio.wait_for(app[POOL].fetchval("SELECT 1"), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = type(exc).__name__
    if BUS in app:
        checks["broker"] = "ok" if app[BUS].ready else "disconnected"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def base_app(
    service: str,
    *,
    json_errors: bool = True,
    client_max_size: int = 256 * 1024,
    middlewares: Sequence[Any] = (),
) -> web.Application:
    chain: list[Any] = [context_middleware]
    if json_errors:
        chain.append(json_error_middleware)
    chain.extend(middlewares)
    app = web.Application(middlewares=chain, client_max_size=client_max_size)
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def add_database(
    app: web.Application, settings: CommonSettings, schema: str, *, max_size: int = 10
) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await _retry(
            "database", lambda: create_pool(settings.database_url, schema, max_size=max_size)
        )
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(ctx)


def add_bus(
    app: web.Application,
    settings: CommonSettings,
    service: str,
    *,
    schema: str | None,
    bindings: Sequence[Binding] = (),
    handlers: dict[str, Handler] | None = None,
    prefetch: int = 32,
) -> None:
    """Connect to RabbitMQ; with a schema, run the outbox relay; with handlers, consume.

    Shutdown order (reverse of start): stop consuming and finish the current event,
    drain the relay, then close the connection."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bus = Bus(settings.amqp_url, settings.bus_prefix, service)
        await _retry("broker", bus.connect)
        app[BUS] = bus
        relay_task: asyncio.Task[None] | None = None
        if schema is not None:
            relay = OutboxRelay(app[POOL], bus, schema, settings.database_url)
            app[RELAY] = relay
            relay_task = asyncio.create_task(relay.run(), name=f"{service}-outbox-relay")
        if handlers:
            app[CONSUMER] = await bus.consume(app[POOL], bindings, handlers, prefetch=prefetch)
        yield
        if CONSUMER in app:
            await app[CONSUMER].stop()
        if relay_task is not None:
            await app[RELAY].drain()
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        await bus.close()

    app.cleanup_ctx.append(ctx)


def periodic(
    name: str, every: float, work: Callable[[web.Application], Awaitable[object]]
) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
    """A cleanup context running ``work`` every ``every`` seconds in a task the app owns;
    a failed round (the database away for a moment) is logged and the next one tries
    again. The task is cancelled and awaited on shutdown."""

    async def loop(app: web.Application) -> None:
        while True:
            try:
                await work(app)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("periodic_task_failed", task=name, error=type(exc).__name__)
            await asyncio.sleep(every)

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


async def _retry(what: str, connect: Callable[[], Awaitable[Any]], attempts: int = 30) -> Any:
    """Dependencies may come up after us (compose, k8s): wait for them, within a bound."""
    for attempt in range(1, attempts + 1):
        try:
            return await connect()
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning(
                "dependency_not_ready", dependency=what, attempt=attempt, error=type(exc).__name__
            )
            await asyncio.sleep(min(0.5 * attempt, 5.0))
    raise AssertionError("unreachable")
