"""The HTTP layer under the routes, against slow and malformed clients: bounded waits for a
request's head (aiohttp's keep-alive timer) and body (a deadline per request), bodies read
only as they were sent (never inflated), and one JSON log line and a metric for every
request refused there."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .errors import DomainError
from .logging import get_logger
from .metrics import HTTP_REFUSED

log = get_logger(__name__)

BODY_TIMEOUT = web.AppKey("body_timeout", float)
# The defaults of HTTP_HEAD_TIMEOUT_SECONDS (aiohttp's run_app's own) and
# HTTP_BODY_TIMEOUT_SECONDS.
HEAD_TIMEOUT_SECONDS = 75.0
BODY_TIMEOUT_SECONDS = 60.0


class BodyTimeout(DomainError, status=408, code="body_timeout"):
    """A request's body that did not arrive within HTTP_BODY_TIMEOUT_SECONDS of its head."""


BODY_TOO_SLOW = "The request body did not arrive in time. Please try again."


@web.middleware
async def body_deadline_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp waits for a body as long as the client likes: a Content-Length announced
    and never sent held the connection (and a file descriptor) for good, so that some
    20,000 of them (the open-files limit) left none for anyone else. Past the deadline
    the body's reader fails with BodyTimeout (answered 408 by the error middlewares) and
    the connection closes."""
    content = request.content
    if not request.body_exists or content.is_eof():
        return await handler(request)
    late = False

    def expire() -> None:
        nonlocal late
        if content.is_eof():
            return
        late = True
        _refused("body_timeout", request.remote, 408, "request body too slow")
        content.set_exception(BodyTimeout(BODY_TOO_SLOW))

    timer = asyncio.get_running_loop().call_later(request.app[BODY_TIMEOUT], expire)
    try:
        response = await handler(request)
    finally:
        timer.cancel()
    if late:
        response.force_close()  # what is left of the body is not read
    return response


class UnsupportedContentEncoding(DomainError, status=415, code="unsupported_content_encoding"):
    """A request body sent compressed (Content-Encoding other than identity)."""

    # RFC 7694 3: what the server takes instead.
    headers = MappingProxyType({"Accept-Encoding": "identity"})


class UnsupportedTransferEncoding(DomainError, status=501, code="unsupported_transfer_encoding"):
    """A transfer coding other than chunked (RFC 9112 6.1: 501)."""


ENCODED_BODY = (
    "The request body must be sent without Content-Encoding: ClientPress reads no"
    " compressed body (gzip, deflate, br or zstd)."
)
CODED_TRANSFER = "The request body must be sent as it is, or with Transfer-Encoding: chunked alone."


def _codings(request: web.Request, header: str) -> list[str]:
    return [
        token.strip().lower()
        for value in request.headers.getall(header, ())
        for token in value.split(",")
        if token.strip()
    ]


@web.middleware
async def body_coding_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """No client of ours compresses a body, and aiohttp inflated whatever said gzip or
    deflate, even a body nobody read: it drains what is left of one before closing, so a
    MiB that inflates to a GiB cost seconds of CPU, with no key or proof needed. A coding
    it didn't know (``compress``, ``gzip, gzip``) it ignored, reading the body as it
    wasn't; br and zstd were a plain-text 400, a declared gzip that wasn't one a 500.
    Services run with ``auto_decompress=False`` (server_options) and refuse an encoded
    body here, before anything reads it; a transfer coding other than chunked (which
    aiohttp ignored too) is 501."""
    if request.body_exists:
        coding = _codings(request, "Content-Encoding")
        if any(c != "identity" for c in coding):
            _refused("content_encoding", request.remote, 415, ",".join(coding)[:60])
            raise UnsupportedContentEncoding(ENCODED_BODY)
        transfer = _codings(request, "Transfer-Encoding")
        if transfer and transfer != ["chunked"]:
            _refused("transfer_encoding", request.remote, 501, ",".join(transfer)[:60])
            raise UnsupportedTransferEncoding(CODED_TRANSFER)
    return await handler(request)


def _refused(reason: str, peer: str | None, status: int, what: str) -> None:
    HTTP_REFUSED.labels(reason).inc()
    log.info("http_request_refused", reason=reason, status=status, peer=peer, detail=what)


# aiohttp's parser errors quote the request's bytes (a header line, a Cookie or an
# Authorization header among them): only the words before the quote are kept.
_QUOTE = re.compile(r":?\s*(?:b'|b\"|bytearray\().*$|:\s*$")


def _detail(exc: HttpProcessingError) -> str:
    lines = str(exc.message or "").strip().splitlines()
    return _QUOTE.sub("", lines[0]).strip()[:120] if lines else ""


class ProtocolLog:
    """aiohttp's server logger (``run_app(logger=…)``): a request the parser refused was
    logged as a traceback in plain text, quoting the request's bytes (an API key in a
    broken header line included), at error level; now it is one JSON line
    ``http_request_refused`` with the reason and the peer, and a count in
    ``clientpress_http_refused_total``. Anything else stays an error, in JSON."""

    def _emit(self, level: str, msg: str, args: tuple[Any, ...], exc: Any) -> None:
        if isinstance(exc, HttpProcessingError):
            peer = args[0] if args and isinstance(args[0], str) else None
            _refused("malformed", peer, exc.code, _detail(exc))
            return
        text = msg % args if args else msg
        getattr(log, level)("http_server_error", detail=text, exc_info=exc or False)

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        self._emit("error", msg, args, exc_info)

    def error(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        self._emit("error", msg, args, exc_info)

    def warning(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        self._emit("warning", msg, args, exc_info)

    def info(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        self._emit("info", msg, args, exc_info)

    def debug(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        # aiohttp's first-request "not HTTP at all" (TLS on the HTTP port): a refusal too.
        if isinstance(exc_info, HttpProcessingError):
            self._emit("debug", msg, args, exc_info)

    def isEnabledFor(self, level: int) -> bool:
        return True


# What every answer says in Server: not aiohttp's "Python/3.11 aiohttp/3.14.5", the
# versions a scanner looks up in advisories (the gateway's on_prepare sets it on the
# answers of its routes, _hide_versions on those aiohttp writes itself).
SERVER_NAME = "ClientPress"


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of every service's apps (``libs.common.web``): Server says
    ClientPress on every answer a route or middleware writes."""
    response.headers["Server"] = SERVER_NAME


def _hide_versions() -> None:
    """aiohttp answers a request its parser refuses (a control byte in a header, a header
    over 8 KiB, an unknown HTTP version) with ``RequestHandler.handle_error``, before any
    route, middleware or on_response_prepare runs: that answer named the versions and had
    no nosniff (its text quotes the request's bytes). Its own answer gets both, for every
    service this process runs; done once."""
    original = RequestHandler.handle_error
    if getattr(original, "_clientpress", False):
        return

    @functools.wraps(original)
    def handle_error(
        self: RequestHandler,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = original(self, request, status, exc, message)
        response.headers["Server"] = SERVER_NAME
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    handle_error._clientpress = True  # type: ignore[attr-defined]
    RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


def server_options(head_timeout: float) -> dict[str, Any]:
    """``web.run_app``'s protocol options for a service. aiohttp's keep-alive timer runs
    whenever a connection waits for a request's head: from its opening or the previous
    answer, not restarted by each byte, so it bounds a head sent a byte at a time as well
    as an idle connection. Answers aiohttp writes itself hide its version
    (_hide_versions)."""
    _hide_versions()
    return {
        "keepalive_timeout": head_timeout,
        "logger": ProtocolLog(),
        # A body is read as it was sent: body_coding_middleware refuses an encoded one.
        "auto_decompress": False,
    }
