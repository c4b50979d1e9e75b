"""The aiohttp app kit: typed app keys, request context, error and service-proof
middlewares, the management app (health, readiness, metrics) on its own port, JSON
helpers, and cleanup contexts for pool, bus and relay."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from opentelemetry.trace import Span, SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from . import tracing
from .actor import ACTOR_HEADER, decode_actor, set_actor
from .broker import CONSUMES, Binding
from .bus import AnyHandler, Bus, Consumer, ServiceHandler, in_inbox
from .context import (
    CORRELATION_HEADER,
    REQUEST_ID_HEADER,
    TIMEOUT_HEADER,
    clean_incoming_id,
    new_id,
    set_correlation_id,
    set_deadline,
)
from .db import DATABASE_AWAY, DatabaseReadOnly, Db, SchemaGate, UseCaseDeps, create_pool
from .errors import DomainError, Forbidden, InvalidInput, RateLimited, TooLarge, Unauthorized
from .json_body import (
    check_media_type,
    parse_json,
    refuse_repeated_keys,
    unreadable_for_pydantic,
)
from .logging import get_logger, redacted
from .metrics import (
    BROKER_BLOCKED,
    BROKER_CONNECTED,
    DEAD_LETTERS_WAITING,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    record_build_info,
)
from .nul import NUL_PROBLEM, json_nul_path, query_nul_path
from .outbox import OutboxRelay
from .protocol import (
    BODY_TIMEOUT,
    BODY_TIMEOUT_SECONDS,
    body_coding_middleware,
    body_deadline_middleware,
    name_the_server,
)
from .retention import delete_in_batches, pruning
from .service_auth import (
    HEADER,
    SCHEME,
    SERVICES,
    ProofRefused,
    ServiceKeys,
    TokenSigner,
    TokenVerifier,
    load_service_keys,
)
from .settings import CommonSettings

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
D = TypeVar("D", bound=UseCaseDeps)

SERVICE = web.AppKey("service", str)
POOL = web.AppKey("pool", asyncpg.Pool)
BUS = web.AppKey("bus", Bus)


@dataclass
class BusParts:
    """The relay and consumer add_bus starts once the broker is reached, which may be after
    the app has started (its state can't change then: this holder does)."""

    relay: OutboxRelay | None = None
    consumer: Consumer | None = None
    consumes: bool = False  # the service has event handlers (its consumer may not yet)
    # The consumers of its other queues (``Apart``), by queue, once started.
    apart: dict[str, Consumer] = field(default_factory=dict)
    apart_queues: tuple[str, ...] = ()


BUS_PARTS = web.AppKey("bus_parts", BusParts)


def relay_held(app: web.Application) -> contextlib.AbstractContextManager[None]:
    """``OutboxRelay.held`` on this app's relay, around a request that writes many rows;
    nothing to hold before the broker is reached (no relay yet) or in a service without
    an outbox."""
    relay = app[BUS_PARTS].relay if BUS_PARTS in app else None
    return relay.held() if relay is not None else contextlib.nullcontext()


SERVICE_KEYS = web.AppKey("service_keys", ServiceKeys)

# The management app's paths: on the main app they answer 404, without asking for proof.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SCHEMA_GATE = web.AppKey("schema_gate", SchemaGate)
# On the management app: the service's main app, whose state readiness reads.
MAIN = web.AppKey("main", web.Application)

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
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> web.Response:
    error = {"code": code, "message": message}
    error.update({k: v for k, v in (details or {}).items() if k not in error})
    return json_response({"error": error}, status, headers)


def http_error_headers(exc: web.HTTPException) -> dict[str, str]:
    """The headers aiohttp's own error carries that its JSON (or page) answer must keep:
    a 405's ``Allow`` (RFC 9110 15.5.6)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return {"Allow": ", ".join(sorted(exc.allowed_methods))}
    return {}


# What the patterns fields must match mean, in words (``readable``).
_PATTERN_WORDS: dict[str, str] = {}


def readable(pattern: str, words: str) -> str:
    """``pattern``, for a Field: a value it refuses is told ``words`` (what the value
    should look like), not shown the regular expression."""
    _PATTERN_WORDS[pattern] = words
    return pattern


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        field = ".".join(str(p) for p in err["loc"] if p != "__root__") or "body"
        message = err["msg"]
        if err["type"] == "string_pattern_mismatch":
            message = _PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")), message)
        elif err["type"] == "value_error":
            # pydantic's prefix for a validator's own sentence, which says it all.
            message = message.removeprefix("Value error, ")
        elif err["type"].endswith("_type") and "input" in err:
            message += f" (got {_json_kind(err['input'])})"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def _json_kind(value: Any) -> str:
    """What a JSON value of the wrong type was: a scalar as it was written (``true``,
    ``7.0``, ``null``), never a string's text (it may be anything, a password)."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return (
        orjson.dumps(value).decode()
        if value is None or isinstance(value, bool | int | float)
        else type(value).__name__
    )


def body_too_large(limit: int) -> TooLarge:
    """413 ``body_too_large``, saying the limit: a route's own, or the app's
    ``client_max_size`` (which aiohttp enforces with an error of its own words)."""
    mib = 1024 * 1024
    size = f"{limit // mib} MiB" if limit >= mib else f"{limit // 1024} KiB"
    return TooLarge(f"The request body must be at most {size}.", code="body_too_large")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body of a route allowed more than the app's ``client_max_size`` (a batch)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(
    request: web.Request,
    model: type[M],
    *,
    limit: int | None = None,
    nul_ok: bool = False,
    any_type: bool = False,
    check: Callable[[Any], None] | None = None,
) -> M:
    """Parse and validate a JSON body (json_body.py: strict JSON, strictly typed), or
    raise a domain error with a readable message: 415 for another declared format, 400
    for a body that isn't JSON, 422 for a value the model refuses. ``limit``: this route's
    own body limit, in place of the app's. ``nul_ok``: the route answers a NUL itself (a
    batch, row by row), before anything is written. ``any_type``: the route reads any
    declared type as JSON (its documentation says so). ``check``: called with the JSON
    value before anything else reads it (a batch's row count: pydantic keeps an error for
    every element of a list it validates, so 8,000,000 rows were 12 GB)."""
    if not any_type:
        check_media_type(request.headers, request.content_type, request.charset)
    body = await (read_body(request, limit) if limit is not None else request.read())
    body, raw = parse_json(body)
    if check is not None:
        check(raw)
    if PROVEN_CALLER not in request:
        refuse_repeated_keys(body)
    where = None if nul_ok else json_nul_path(body, raw)
    if where is not None:
        raise InvalidInput(f"{where}: {NUL_PROBLEM}.", code="invalid_character")
    try:
        # From the bytes, strict: JSON's own types only (a string is a UUID or a time where
        # the model says so, but never a number or a boolean).
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise unreadable_for_pydantic(exc.errors()) or InvalidInput(
            describe_validation(exc)
        ) from None


def path_uuid(request: web.Request, name: str, not_a_uuid: DomainError) -> uuid.UUID:
    """The path parameter ``name`` as a UUID; anything else names nothing there, and
    answers ``not_a_uuid``."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise not_a_uuid from None


def parse_query(request: web.Request, model: type[M], *, nul_ok: bool = False) -> M:
    """``nul_ok``: the route stores none of it as text (a link's token, looked up by its
    hash), so a NUL is only a value that matches nothing, answered as any other."""
    where = None if nul_ok else query_nul_path(request.query)
    if where is not None:
        raise InvalidInput(f"{where}: {NUL_PROBLEM}.", code="invalid_character")
    # Every parameter takes one value: of two, one would be dropped without a word (a
    # filter by the first status only, while the caller asked for both).
    repeated = next((name for name in request.query if len(request.query.getall(name)) > 1), None)
    if repeated is not None:
        raise InvalidInput(
            f"{repeated}: given more than once; give each parameter once.",
            code="repeated_parameter",
        )
    for kind, (spelling, problem) in _SPELLINGS.items():
        for name in _parameters(model, kind):
            value = request.query.get(name)
            if value is not None and not spelling.fullmatch(value):
                raise InvalidInput(f"{name}: {problem}")
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc)) from None


# A query value as strict as the same value in a JSON body, one spelling each. Pydantic
# reads text leniently: an integer as Python's int() does ("+5", " 5", "5.0" were 5 and
# "1_0" was 10); a boolean as yes/no, on/off, 1/0, True, ("dry_run=1" a preview); a UUID
# in braces, without hyphens, as urn:uuid:… The sign stays, so that a negative number is
# told its range. 1 and 0 are not booleans here: a JSON body's boolean is true or false,
# and so is the one OpenAPI's clients send in a query.
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
NOT_A_WHOLE_NUMBER = "Input should be a whole number, in the digits 0-9 alone"
_BOOLEAN = re.compile(r"true|false")
NOT_A_BOOLEAN = "Input should be true or false"
_HEX = "[0-9a-fA-F]"
_CANONICAL_UUID = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")
NOT_A_UUID = "Input should be a UUID: 32 hexadecimal digits in groups of 8-4-4-4-12 with hyphens"
_SPELLINGS: dict[type, tuple[re.Pattern[str], str]] = {
    int: (_WHOLE_NUMBER, NOT_A_WHOLE_NUMBER),
    bool: (_BOOLEAN, NOT_A_BOOLEAN),
    uuid.UUID: (_CANONICAL_UUID, NOT_A_UUID),
}


@functools.cache
def _parameters(model: type[BaseModel], kind: type) -> tuple[str, ...]:
    """The query parameters of ``model`` of type ``kind`` (``kind`` or ``kind | None``)."""
    names = []
    for name, info in model.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        if kind in kinds:
            names.append(info.alias or name)
    return tuple(names)


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def context_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    set_actor(None)  # bound again by the gateway's session check or the service proof
    set_deadline(None)  # set again by the service proof, from the caller's timeout
    request_id = clean_incoming_id(request.headers.get(REQUEST_ID_HEADER)) or new_id()
    correlation_id = clean_incoming_id(request.headers.get(CORRELATION_HEADER)) or request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    set_correlation_id(correlation_id)
    route = route_name(request)
    if tracing.enabled() and route not in OPEN_PATHS:
        with tracing.span(
            f"{request.method} {route}",
            SpanKind.SERVER,
            {"http.request.method": request.method, "http.route": route},
            incoming=request.headers,
        ) as span:
            response = await _measured(request, handler, route, span)
    else:
        response = await _measured(request, handler, route, None)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers[CORRELATION_HEADER] = correlation_id
    return response


async def _measured(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    route: str,
    span: Span | None,
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(elapsed)
        _access_log(request.method, route, status, elapsed)
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                tracing.failed(span, str(status))
    return response


def _access_log(method: str, route: str, status: int, elapsed: float) -> None:
    """One line per request, with the route's pattern (never the path or query, which may
    hold ids or a token); request_id and correlation_id come from the context. Probes
    (health, readiness, metrics: every few seconds from each orchestrator) log at debug."""
    emit = log.debug if route in OPEN_PATHS else log.info
    emit(
        "http_request",
        method=method,
        route=route,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
    )


@web.middleware
async def json_error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        refused = body_too_large(request.client_max_size)
        return error_response(refused.status, refused.code, refused.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason, http_error_headers(exc))
    except RateLimited as exc:
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            {"Retry-After": str(exc.retry_after)},
            exc.details,
        )
    except DomainError as exc:
        return error_response(
            exc.status, exc.code, exc.message, dict(exc.headers) or None, exc.details
        )
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


# How long /readyz waits for the database's answer before it says not ready.
READY_CHECK_SECONDS = 2.0


class DatabaseCheck:
    """Readiness's database check, run as a task of its own that /readyz waits for at most
    READY_CHECK_SECONDS: cancelling a query on a connection that went silent (a network
    black hole) makes asyncpg wait for its cancel request and the connection's release
    (LOCK_WAIT_SECONDS more), and a wait_for around it answered after 6 s. The task ends
    by itself, its connection released or closed by the pool; one runs at a time, so
    probes every second during an outage hold one connection, not one each."""

    def __init__(self) -> None:
        self._task: asyncio.Task[list[str]] | None = None

    async def pending(self, app: web.Application) -> list[str]:
        """SchemaGate.pending on the pool, or TimeoutError at READY_CHECK_SECONDS."""
        if self._task is None or self._task.done():
            check = app[SCHEMA_GATE].pending(app[POOL])
            self._task = asyncio.create_task(asyncio.wait_for(check, READY_CHECK_SECONDS))
            self._task.add_done_callback(_retrieved)
        task = self._task
        await asyncio.wait({task}, timeout=READY_CHECK_SECONDS)
        if not task.done():
            raise TimeoutError
        return task.result()

    async def close(self, _: web.Application) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})


def _retrieved(task: asyncio.Task[list[str]]) -> None:
    """A check that ended after its probe answered: its error was the probe's to say."""
    if not task.cancelled():
        task.exception()


DATABASE_CHECK = web.AppKey("database_check", DatabaseCheck)


async def readyz(request: web.Request) -> web.Response:
    """Ready = can serve: the database answers, takes writes, and holds every migration
    this code needs; not ready within READY_CHECK_SECONDS whatever the database does.
    The broker is reported, never required: the outbox keeps what is published while it
    is away or blocks the service (a resource alarm), and the relay and consumers
    reconnect and resume by themselves."""
    app = request.app[MAIN]
    checks: dict[str, str] = {}
    ready = True
    if POOL in app:
        try:
            pending = await request.app[DATABASE_CHECK].pending(app)
            checks["database"] = "ok"
            if pending:
                ready = False
                checks["schema"] = (
                    f"migrations not applied: {', '.join(pending)}"
                    f" (run `python -m services.{app[SERVICE]} migrate`)"
                )
            else:
                checks["schema"] = "ok"
        except DatabaseReadOnly:
            # A failover to a standby: reads would work, every write would fail.
            ready = False
            checks["database"] = "read-only"
        except Exception as exc:
            ready = False
            checks["database"] = type(exc).__name__
    elif SCHEMA_GATE in app:
        # Still starting: waiting for the database (the last try's reason), or trying it.
        ready = False
        checks["database"] = app.get(STARTING, {}).get("database", "connecting")
    site = request.app.get(MAIN_SITE)
    if site is not None:
        # The management port opens first, the service's own port once every start step
        # is done: ready only once it takes connections, else a caller told "ready" (a
        # test, a Service's endpoints) is refused.
        if ready and not site.listening:
            site.listening = await site.accepts()
        checks["listening"] = "ok" if site.listening else "starting"
        ready = ready and site.listening
    if BUS in app:
        checks["broker"] = _broker_state(app[BUS])
    parts = app.get(BUS_PARTS)
    if parts is not None and parts.consumes:
        # Reported like the broker: the events wait in the queue meanwhile.
        checks["consumer"] = _consumer_state(parts.consumer)
        for queue in parts.apart_queues:
            checks[f"consumer:{queue}"] = _consumer_state(parts.apart.get(queue))
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


def _consumer_state(consumer: Consumer | None) -> str:
    if consumer is None:
        return "starting"
    return "cancelled" if consumer.cancelled else "ok"


def _broker_state(bus: Bus) -> str:
    """``ok``, ``disconnected``, or ``blocked``: connected, but RabbitMQ reads nothing
    from the service until its resource alarm clears (events wait in the outbox)."""
    up = bus.ready
    blocked = up and bus.blocked
    BROKER_CONNECTED.set(1 if up else 0)
    BROKER_BLOCKED.set(1 if blocked else 0)
    if not up:
        return "disconnected"
    return "blocked" if blocked else "ok"


async def metrics(request: web.Request) -> web.Response:
    app = request.app[MAIN]
    if BUS in app:
        _broker_state(app[BUS])
        parts = app.get(BUS_PARTS)
        if parts is not None and parts.consumes:
            for queue in (None, *parts.apart_queues):
                await _dead_letters(app[BUS], queue)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _dead_letters(bus: Bus, of: str | None = None) -> None:
    """What waits in the service's dead-letter queue, whoever put it there: the service
    counts its own refusals (clientpress_events_dead_lettered_total), but the broker also
    dead-letters by itself (the delivery limit after a crash, a publisher's short
    ``expiration``, a queue over its limits) and nobody counted those. Logged when the
    count grows. Left as it was when the broker can't say."""
    count = await bus.dead_letters(of)
    if count is None:
        return
    queue = f"{bus.queue_name(of)}.dead"
    before = _DEAD_LETTERS_SEEN.get(queue, 0)
    _DEAD_LETTERS_SEEN[queue] = count
    DEAD_LETTERS_WAITING.labels(queue).set(count)
    if count > before:
        log.warning("dead_letters_waiting", queue=queue, messages=count, before=before)


# The dead-letter count each queue had at the last look (the gauge's own is private).
_DEAD_LETTERS_SEEN: dict[str, int] = {}


def base_app(
    service: str,
    *,
    json_errors: bool = True,
    client_max_size: int = 256 * 1024,
    middlewares: Sequence[Any] = (),
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> web.Application:
    """A service's main app, on its public port. Health, readiness and metrics are not
    here: they are on the management app (``serve_management``). ``body_timeout``:
    HTTP_BODY_TIMEOUT_SECONDS (libs/common/protocol.py)."""
    # Order matters, outermost first: the request context (request and correlation ids,
    # the access log line) wraps everything, so even an error answer is logged with its
    # ids; the JSON error middleware wraps the service's own middlewares and the service
    # proof (appended last by ``require_service_proof``), so their refusals are JSON too.
    # The body's deadline wraps every reader of the body (the gateway's CSRF check reads
    # forms) and sees the error middlewares' 408, whose connection it closes.
    chain: list[Any] = [context_middleware, body_deadline_middleware]
    if json_errors:
        # The gateway, which answers pages too, puts the coding check inside its own.
        chain.extend([json_error_middleware, body_coding_middleware])
    chain.extend(middlewares)
    app = web.Application(middlewares=chain, client_max_size=client_max_size)
    app.on_response_prepare.append(name_the_server)
    app[SERVICE] = service
    app[BODY_TIMEOUT] = body_timeout
    record_build_info(service)
    return app


def management_app(main: web.Application) -> web.Application:
    """``/healthz``, ``/readyz`` and ``/metrics`` for ``main``, whose state they read."""
    app = web.Application(middlewares=[context_middleware, json_error_middleware])
    app.on_response_prepare.append(name_the_server)
    app[MAIN] = main
    app[SERVICE] = main[SERVICE]
    app[DATABASE_CHECK] = DatabaseCheck()
    app.on_cleanup.append(app[DATABASE_CHECK].close)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def service_keys(app: web.Application, settings: CommonSettings) -> ServiceKeys:
    """This service's keys (SERVICE_KEY, SERVICE_PUBLIC_KEYS), loaded once per app; a
    development key with a PUBLIC_URL that is not local raises ConfigError here."""
    if SERVICE_KEYS not in app:
        app[SERVICE_KEYS] = load_service_keys(app[SERVICE], settings)
    return app[SERVICE_KEYS]


def service_signer(app: web.Application, settings: CommonSettings) -> TokenSigner:
    """What a ServiceClient of this app signs its calls with."""
    return TokenSigner(service_keys(app, settings))


class ServiceGuard:
    """Who may call which route: ``{"METHOD /canonical/{path}": {caller, ...}}``."""

    def __init__(self, verifier: TokenVerifier, callers: Mapping[str, Collection[str]]) -> None:
        self.verifier = verifier
        self.callers = {route: frozenset(names) for route, names in callers.items()}
        strangers = {n for names in self.callers.values() for n in names} - set(SERVICES)
        if strangers:
            raise ValueError(f"unknown callers {sorted(strangers)}")

    def check_covers(self, router: web.UrlDispatcher) -> None:
        """Every route has its callers written down, and every entry is a route: a route
        added without a thought about who calls it fails at start, not in production."""
        routes = set()
        for route in router.routes():
            resource = route.resource
            if resource is None or route.method in {"HEAD", "*"}:
                continue
            if resource.canonical not in OPEN_PATHS:
                routes.add(f"{route.method} {resource.canonical}")
        listed = set(self.callers)
        if routes != listed:
            raise ValueError(
                f"service callers table: routes without callers {sorted(routes - listed)},"
                f" entries without a route {sorted(listed - routes)}"
            )

    def allowed(self, request: web.Request) -> frozenset[str] | None:
        """The callers of the request's route; None when no route matched (404/405)."""
        resource = request.match_info.route.resource
        if resource is None:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        return self.callers.get(f"{method} {resource.canonical}", frozenset())


GUARD = web.AppKey("service_guard", ServiceGuard)
# The ClientPress service a request proved it came from (service_proof_middleware).
PROVEN_CALLER = web.RequestKey("clientpress_proven_caller", str)


@web.middleware
async def service_proof_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    guard = request.app[GUARD]
    try:
        caller = guard.verifier.caller(request.headers.get(HEADER))
    except ProofRefused as exc:
        log.warning("service_proof_refused", reason=str(exc), route=route_name(request))
        raise Unauthorized(
            f"This internal API answers only ClientPress services: send"
            f" '{HEADER}: {SCHEME} <token>' signed with the calling service's key"
            f" ({exc}).",
            code="service_auth_required",
        ) from None
    allowed = guard.allowed(request)
    if allowed is not None and caller not in allowed:
        log.warning("service_forbidden", caller=caller, route=route_name(request))
        raise Forbidden(
            f"The {caller} service may not call {request.method} {route_name(request)}.",
            code="service_forbidden",
        )
    structlog.contextvars.bind_contextvars(caller=caller)
    request[PROVEN_CALLER] = caller
    # The calls this request makes in turn give up before its caller does, so the
    # caller hears this service's 503 rather than giving up on work still under way.
    set_deadline(request.headers.get(TIMEOUT_HEADER))
    # Who made the change comes only from the gateway, which knows the user or the key;
    # the same header from any other caller is ignored.
    actor_header = request.headers.get(ACTOR_HEADER)
    if caller == "gateway":
        set_actor(decode_actor(actor_header))
    elif actor_header is not None:
        log.warning("actor_header_ignored", caller=caller, route=route_name(request))
    return await handler(request)


View = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """A route of a service's internal API and the services that may call it
    (require_service_proof; docs/internal-api.md "Who may call what")."""

    method: str
    path: str
    view: View
    callers: frozenset[str]


def add_routes(app: web.Application, routes: Sequence[Route]) -> None:
    """The routes, in the order given: a fixed path goes before a variable one that would
    also match it."""
    app.router.add_routes([web.route(r.method, r.path, r.view) for r in routes])


def callers_of(routes: Sequence[Route], *, openapi: bool = False) -> dict[str, frozenset[str]]:
    """Who may call each route, as require_service_proof takes it; with ``openapi``, also
    the service's OpenAPI document (GET /openapi.json), which every service may read."""
    callers = {f"{r.method} {r.path}": r.callers for r in routes}
    if openapi:
        callers["GET /openapi.json"] = frozenset(SERVICES)
    return callers


def require_service_proof(
    app: web.Application, settings: CommonSettings, callers: Mapping[str, Collection[str]]
) -> None:
    """Every route but health, readiness and metrics answers only the services listed for
    it (401 ``service_auth_required`` without proof, 403 ``service_forbidden`` for another
    service). Call it after the last route is added."""
    guard = ServiceGuard(TokenVerifier(service_keys(app, settings)), callers)
    guard.check_covers(app.router)
    app[GUARD] = guard
    app.middlewares.append(service_proof_middleware)


@dataclass
class MainSite:
    """Where the service's own port listens, for ``readyz``: ``listening`` once it took a
    connection (it never stops listening before the process stops)."""

    host: str
    port: int
    listening: bool = False

    async def accepts(self) -> bool:
        # A wildcard address (a container's) takes a connection on the loopback.
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        host = wildcard.get(self.host, self.host)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


MAIN_SITE = web.AppKey("main_site", MainSite)


def serve_management(
    app: web.Application, host: str, port: int, *, serving: int | None = None
) -> None:
    """Serve the management app on its own port (MANAGEMENT_PORT), which no ingress
    routes, from the start of ``app``'s startup: while it waits for its database,
    ``/healthz`` says the process is alive and ``/readyz`` says why it is not ready (a
    service that listened only once the database answered was killed by its liveness
    probe, unheard: tests/faults/test_database_at_start.py). It closes as it did when
    it opened last: first in the cleanup, after the main site has stopped taking
    requests, before the rest (the pool, the broker) is closed."""
    management = management_app(app)
    if serving is not None:  # ``app``'s own port: ready once it listens too
        management[MAIN_SITE] = MainSite(host, serving)
    runner = web.AppRunner(management, access_log=None, shutdown_timeout=1)
    opened = False

    async def close(_: web.Application) -> None:
        nonlocal opened
        if opened:
            opened = False
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        nonlocal opened
        await runner.setup()
        opened = True
        try:
            await web.TCPSite(runner, host, port).start()
            log.info("management_listening", host=host, port=port)
            yield
        finally:
            await close(app)

    @contextlib.asynccontextmanager
    async def closes_first(_: web.Application) -> AsyncIterator[None]:
        yield
        await close(app)

    # Opens first, before the database, the broker and the rest are waited for; the
    # last context's exit (the first to run) closes it. A start that fails closes it
    # in ``ctx``'s own exit.
    app.cleanup_ctx.insert(0, ctx)
    app.cleanup_ctx.append(closes_first)


def add_database(
    app: web.Application,
    settings: CommonSettings,
    schema: str,
    *,
    migrations: Path,
    max_size: int = 10,
) -> None:
    """The schema's pool; readiness waits until ``migrations`` (the service's directory)
    are all applied."""
    app[SCHEMA_GATE] = SchemaGate(schema, migrations)
    waits = _waits(app)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await _retry(
            "database",
            # Each service's schema bears its name, and so does its database role.
            lambda: create_pool(settings.service_database_url(schema), schema, max_size=max_size),
            waits=waits,
        )
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(ctx)


def add_deps(app: web.Application, key: web.AppKey[D], build: Callable[[asyncpg.Pool], D]) -> None:
    """The service's use-case ``Deps`` under ``key``, built on the pool once it is open
    (add_database first): the views and the consumer call the use cases with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[key] = build(app[POOL])
        yield

    app.cleanup_ctx.append(ctx)


# Called once the consumer's queue is declared and bound (with the bus and the consumer).
Consuming = Callable[[Bus, Consumer], Awaitable[None]]

H = TypeVar("H")


@dataclass(frozen=True)
class Apart(Generic[H]):
    """Another queue of the service's own (``queue``, a key of ``broker.CONSUMES``, bound
    as it says), read by a consumer of its own, on a channel and prefetch of its own: what
    waits in it (a flood of requests from other systems) never delays the events of the
    main queue. Started before the main consumer, so it is bound before the main queue
    drops the bindings it takes over (``broker.RETIRED_BINDINGS``)."""

    queue: str
    handlers: Mapping[str, H]
    prefetch: int = 32
    alone: Collection[str] = ()


def add_service_bus(
    app: web.Application,
    settings: CommonSettings,
    service: str,
    deps: web.AppKey[D],
    bindings: Sequence[Binding],
    handlers: Mapping[str, ServiceHandler[D]],
    *,
    prefetch: int = 32,
    alone: Collection[str] = (),
    consuming: Consuming | None = None,
    apart: Sequence[Apart[ServiceHandler[D]]] = (),
) -> None:
    """add_bus for a service with its own schema (add_database first): the outbox relay of
    that schema, and a consumer that runs each event handler on the ``Deps`` under
    ``deps`` within the inbox transaction (``in_inbox``). After the Deps' context, so the
    consumer finds them."""
    add_bus(
        app,
        settings,
        service,
        schema=app[SCHEMA_GATE].schema,
        bindings=bindings,
        handlers=in_inbox(lambda: app[deps], handlers),
        prefetch=prefetch,
        alone=alone,
        consuming=consuming,
        apart=[
            Apart(a.queue, in_inbox(lambda: app[deps], a.handlers), a.prefetch, a.alone)
            for a in apart
        ],
    )


def add_bus(
    app: web.Application,
    settings: CommonSettings,
    service: str,
    *,
    schema: str | None,
    bindings: Sequence[Binding] = (),
    handlers: Mapping[str, AnyHandler] | None = None,
    prefetch: int = 32,
    alone: Collection[str] = (),
    consuming: Consuming | None = None,
    apart: Sequence[Apart[AnyHandler]] = (),
) -> None:
    """Connect to RabbitMQ; with a schema, run the outbox relay; with handlers, consume
    (the event types in ``alone`` each in a transaction of its own: see Bus.consume), then
    call ``consuming`` (a failure there is logged, and consuming goes on).

    The connection is made in the background: a service serves pages and API calls while
    the broker is away, even at start (the outbox keeps what it writes until the relay can
    publish), and readiness reports the broker without failing on it.
    Shutdown order (reverse of start): stop consuming and finish the current event,
    drain the relay, then close the connection."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bus = Bus(settings.service_amqp_url(service), settings.bus_prefix, service)
        app[BUS] = bus
        parts = app[BUS_PARTS] = BusParts(
            consumes=bool(handlers), apart_queues=tuple(a.queue for a in apart)
        )
        relay_task: asyncio.Task[None] | None = None

        async def start() -> None:
            nonlocal relay_task
            await _connect_patiently(bus)
            if schema is not None:
                relay = OutboxRelay(app[POOL], bus, schema, settings.service_database_url(service))
                parts.relay = relay
                relay_task = asyncio.create_task(relay.run(), name=f"{service}-outbox-relay")
            if handlers:
                if schema is not None:
                    await _schema_current(app)
                # An event older than the inbox remembers ids might be one applied and
                # forgotten, sent back: refused (Consumer).
                retention = timedelta(hours=settings.inbox_retention_hours)
                max_age = retention if schema is not None else None
                for other in apart:
                    parts.apart[other.queue] = await _consume_patiently(
                        other.queue,
                        functools.partial(
                            bus.consume,
                            app[POOL],
                            CONSUMES[other.queue],
                            other.handlers,
                            prefetch=other.prefetch,
                            alone=other.alone,
                            max_age=max_age,
                            queue=other.queue,
                        ),
                    )
                parts.consumer = await _consume_patiently(
                    service,
                    functools.partial(
                        bus.consume,
                        app[POOL],
                        bindings,
                        handlers,
                        prefetch=prefetch,
                        alone=alone,
                        max_age=max_age,
                    ),
                )
                if consuming is not None:
                    try:
                        await consuming(bus, parts.consumer)
                    except Exception as exc:
                        log.warning("consuming_hook_failed", error=type(exc).__name__)

        starter = asyncio.create_task(start(), name=f"{service}-broker-start")
        yield
        if not starter.done():
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
        # A broker blocking the connection (a resource alarm) would answer no cancel.
        for consumer in (parts.consumer, *parts.apart.values()):
            if consumer is not None:
                await consumer.stop(cancel=not bus.blocked)
        if relay_task is not None and parts.relay is not None:
            await parts.relay.drain()
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        await bus.close()

    app.cleanup_ctx.append(ctx)
    if schema is not None:

        async def forget_old_events(app: web.Application) -> dict[str, int]:
            return {"inbox": await prune_inbox(app[POOL], settings.inbox_retention_hours)}

        app.cleanup_ctx.append(pruning("inbox-prune", forget_old_events))


async def prune_inbox(db: Db, retention_hours: float) -> int:
    """Forget applied event ids older than the retention window, in bounded batches so no
    statement holds locks for long; returns how many rows went."""
    return await delete_in_batches(
        db, "inbox", "received_at < now() - make_interval(secs => $1)", retention_hours * 3600
    )


SCHEMA_WAIT_SECONDS = 2.0


async def _schema_current(app: web.Application) -> None:
    """Wait until the schema has every migration this code ships (readiness's question):
    a consumer started before ``migrate`` ran (the services restarted first, a restore)
    would fail each event on a missing table or column, and the queue's delivery limit
    would dead-letter them. Until then the events wait in the queue. Asked once: the
    schema, once current, stays so (migrations only add)."""
    gate = app[SCHEMA_GATE]
    told = False
    while True:
        try:
            pending = await gate.pending(app[POOL])
        except Exception as exc:  # the database away or read-only: ask again shortly
            pending = [type(exc).__name__]
        if not pending:
            if told:
                log.info("consumer_schema_current")
            return
        if not told:
            log.warning("consumer_waits_for_schema", pending=pending)
            told = True
        await asyncio.sleep(SCHEMA_WAIT_SECONDS)


async def _consume_patiently(queue: str, consume: Callable[[], Awaitable[Consumer]]) -> Consumer:
    """Start consuming ``queue``, however often the broker refuses it: the connection lost
    between connecting and consuming, or the queue refused to this user (an upgrade
    started before the provisioning gave it the new release's queue). Before, the start
    gave up for good on the first refusal: the service served, said ready, and never
    consumed an event again until restarted."""
    attempt = 0
    while True:
        attempt += 1
        try:
            consumer = await consume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "consumer_not_started",
                queue=queue,
                attempt=attempt,
                error=type(exc).__name__,
                reason=str(exc)[:300],
            )
            await asyncio.sleep(_start_pause(attempt))
            continue
        if attempt > 1:
            log.info("consumer_started", queue=queue, attempt=attempt)
        return consumer


async def _connect_patiently(bus: Bus) -> None:
    """Connect, however long the broker is away (a pause growing to 5 s between tries)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await bus.connect()
            if attempt > 1:
                log.info("broker_connected", attempt=attempt)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            refusal = bus.refusal(exc)
            log.warning(
                "dependency_not_ready",
                dependency="broker",
                attempt=attempt,
                error=type(exc).__name__,
                **({"reason": refusal} if refusal is not None else {}),
            )
            await bus.close()
            await asyncio.sleep(_start_pause(attempt))


# How many times a dependency the start needs is tried (a pause growing to 5 s between
# tries: about two minutes) before the service gives up and exits.
START_ATTEMPTS = 30


def _start_pause(attempt: int) -> float:
    """The pause after the start's ``attempt``-th failed try of a dependency: half a
    second more each time, 5 s at most."""
    return min(0.5 * attempt, 5.0)


async def _retry(
    what: str,
    connect: Callable[[], Awaitable[Any]],
    attempts: int = START_ATTEMPTS,
    *,
    waits: dict[str, str] | None = None,
) -> Any:
    """Dependencies may come up after us (compose, k8s): wait for them, within a bound.
    Each failed try is logged with its reason, which ``waits`` (``/readyz``) holds until
    the dependency answers; giving up is logged too, then raised (the process exits)."""
    for attempt in range(1, attempts + 1):
        try:
            found = await connect()
        except Exception as exc:
            reason = _reason(exc)
            if waits is not None:
                waits[what] = reason
            if attempt == attempts:
                log.error(
                    "dependency_unavailable",
                    dependency=what,
                    attempts=attempts,
                    error=type(exc).__name__,
                    reason=reason,
                    outcome="giving up: the service exits",
                )
                raise
            pause = _start_pause(attempt)
            log.warning(
                "dependency_not_ready",
                dependency=what,
                attempt=attempt,
                attempts=attempts,
                error=type(exc).__name__,
                reason=reason,
                retry_in=pause,
            )
            await asyncio.sleep(pause)
            continue
        if waits is not None:
            waits.pop(what, None)
        if attempt > 1:
            log.info("dependency_ready", dependency=what, attempt=attempt)
        return found
    raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    """What a failed connection attempt says (``ConnectionRefusedError: [Errno 111] Connect
    call failed ('10.0.0.5', 5432)``), bounded for a log line and a readiness answer, a
    URL's password masked as in the logs."""
    text = redacted(str(exc).strip())
    said = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return said if len(said) <= 300 else said[:299] + "…"


# What the start still waits for (``dependency`` → the last try's reason), for /readyz.
STARTING = web.AppKey("starting", dict[str, str])


def _waits(app: web.Application) -> dict[str, str]:
    if STARTING not in app:
        app[STARTING] = {}
    return app[STARTING]
