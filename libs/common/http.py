"""Calls between services over HTTP: proof of the calling service and the correlation id
sent, JSON errors turned back into domain errors, and an unreachable service reported as
Unavailable (503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import orjson
from opentelemetry.trace import SpanKind

from . import tracing
from .actor import ACTOR_HEADER, current_actor, encode_actor
from .context import (
    CORRELATION_HEADER,
    TIMEOUT_HEADER,
    clean_incoming_id,
    current_correlation_id,
    time_left,
)
from .errors import DomainError, Unavailable, from_status
from .logging import get_logger
from .service_auth import TokenSigner

log = get_logger(__name__)
# The called service refused this one's proof (libs/common/web.py require_service_proof).
REFUSED_PROOF = frozenset({(401, "service_auth_required"), (403, "service_forbidden")})
# A call made while serving another service's request ends this long before that caller
# gives up: time for this service to answer its 503.
ANSWER_MARGIN = 0.5

T = TypeVar("T")


def _unavailable(name: str) -> Unavailable:
    return Unavailable(f"The {name} service is unavailable.", code=f"{name}_unavailable")


def _budget(name: str) -> float | None:
    """The seconds a call to the ``name`` service may take while serving another service's
    request: until ANSWER_MARGIN before that caller gives up (None: no caller waits on a
    clock). Unavailable when that time is already gone."""
    left = time_left()
    if left is None:
        return None
    if left <= ANSWER_MARGIN:
        raise _unavailable(name)
    return left - ANSWER_MARGIN


async def by_deadline(name: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work()`` (a call to the ``name`` service shared with other requests: GroupCommit's
    writer runs on no one's deadline) awaited only until ANSWER_MARGIN before the caller
    of the request being served gives up, as ServiceClient.call's own calls are; then
    Unavailable, the shared call going on for the others."""
    budget = _budget(name)
    if budget is None:
        return await work()
    bound = asyncio.timeout(budget)
    try:
        async with bound:
            return await work()
    except TimeoutError:
        if not bound.expired():
            raise
        raise _unavailable(name) from None


class ServiceClient:
    """Calls the service ``name`` (the audience of the tokens ``signer`` mints)."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, name: str, *, signer: TokenSigner
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.signer = signer

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``timeout``: this call's own limit in seconds, in place of the session's (a
        batch that writes many rows). Serving another service's request, the call ends
        ANSWER_MARGIN before that caller gives up (libs/common/context.py time_left): two
        calls of 6 s each made the gateway answer 503 after its 10 s while the invitation
        was made at 12 s, and a retry of that 503 sent a second email
        (tests/faults/test_slow_upstream.py). The callee is told how long this one waits
        (TIMEOUT_HEADER)."""
        limit = timeout or self.session.timeout.total or 0.0
        budget = _budget(self.name)
        if budget is not None:
            limit = min(limit, budget) if limit else budget
        all_headers: dict[str, str] = {}
        if limit:
            all_headers[TIMEOUT_HEADER] = f"{limit:.3f}"
        # Only an id the callee would take (context_middleware): an integration's
        # correlation id may hold what no header can (a line break, a control character),
        # and a call refused for it would fail the event it serves again and again.
        correlation_id = clean_incoming_id(current_correlation_id())
        if correlation_id is not None:
            all_headers[CORRELATION_HEADER] = correlation_id
        actor = current_actor()
        # Only the gateway vouches for who asked; the services don't pass it on.
        if actor is not None and self.signer.keys.service == "gateway":
            all_headers[ACTOR_HEADER] = encode_actor(actor)
        if headers:
            all_headers.update(headers)
        all_headers.update(self.signer.headers_for(self.name))
        data = orjson.dumps(json) if json is not None else None
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        with tracing.span(
            f"{method} {self.name}",
            SpanKind.CLIENT,
            {"http.request.method": method, "server.address": self.name},
        ) as span:
            tracing.outgoing(all_headers)
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    data=data,
                    params=params,
                    headers=all_headers,
                    timeout=aiohttp.ClientTimeout(total=limit) if limit else self.session.timeout,
                ) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tracing.failed(span, type(exc).__name__)
                raise Unavailable(
                    f"The {self.name} service is unavailable.", code=f"{self.name}_unavailable"
                ) from exc
            if span is not None:
                span.set_attribute("http.response.status_code", status)
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            # Not the service's answer: a proxy's or mesh's own page (Envoy's "upstream
            # connect error", an ingress's 502 HTML), a route the callee's version lacks.
            # The service is out of reach (503 with Retry-After), never a 500 of ours.
            log.error(
                "internal_answer_unreadable",
                service=self.name,
                status=status,
                path=path,
                content_type=response.headers.get("Content-Type", ""),
            )
            raise Unavailable(
                f"The {self.name} service is unavailable.", code=f"{self.name}_unavailable"
            ) from None
        if status >= 400:
            error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            if not isinstance(error, dict):
                error = {}
            if (status, error.get("code")) in REFUSED_PROOF:
                # The deployment's fault (keys, clocks, the callers table), never the
                # request's: passed on, a 401 told an /api client its own key was refused.
                log.error(
                    "internal_call_refused",
                    service=self.name,
                    status=status,
                    path=path,
                    reason=str(error.get("message", "")),
                )
                raise Unavailable(
                    f"The {self.name} service is unavailable.", code=f"{self.name}_unavailable"
                )
            raise from_status(
                status,
                str(error.get("code", "error")),
                str(error.get("message", f"{self.name} answered {status}")),
                {k: v for k, v in error.items() if k not in ("code", "message")},
            )
        return payload


def new_session(timeout: float = 10.0, limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=limit),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


@asynccontextmanager
async def service_sessions(*names: str) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """A session of its own (new_session: its own pool of connections) for each called
    service in ``names``. A service that accepts connections and answers nothing holds
    its calls for the whole timeout: with one pool for all, a hundred of them took every
    connection, and the calls to the services that did answer waited for one and failed
    too (tests/faults/test_slow_upstream.py)."""
    async with AsyncExitStack() as stack:
        yield {name: await stack.enter_async_context(new_session()) for name in names}


__all__ = ["DomainError", "ServiceClient", "by_deadline", "new_session", "service_sessions"]
