"""structlog JSON logging with service, request_id and correlation_id on every line.

Secrets never reach a log line: the redaction processor masks any field whose name says
it holds one, token-looking query strings, the password of a URL (a DSN) and the value
of an Authorization, API-key or Cookie header written in a text.

What the libraries log through the standard library's ``logging`` (aiohttp, asyncio,
asyncpg, aio_pika, Python's warnings) goes through the same processors: one JSON line
each, traceback included, with the logger's name as ``logger``."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import Processor

_SECRET_KEYS = re.compile(r"(token|password|passwd|secret|hash|cookie|authorization|api_key)", re.I)
_SECRET_IN_TEXT = re.compile(r"((?:token|password|key)=)[^&\s\"']+", re.I)
# scheme://user:PASSWORD@host: a DATABASE_URL or AMQP_URL in a library's error.
_SECRET_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@\s/\"']+(@)", re.I)
# A header written out, "Authorization: Bearer …" or {'X-API-Key': '…'}: to the line's or
# the quote's end.
_SECRET_HEADER = re.compile(
    r"((?:proxy-)?authorization|x-api-key|api[-_]key|set-cookie|cookie)(['\"]?[ \t]*:[ \t]*['\"]?)"
    r"[^\r\n'\"]+",
    re.I,
)


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret: the names are the code's own, a few
    hundred at most, so each is searched once, not on every line."""
    return key != "event" and _SECRET_KEYS.search(key) is not None


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Values change, keys don't: the dict can be walked as it is. Each pattern only where
    # its sign is (most values hold none), and the timestamp is ours: a line's cost stays
    # within a few microseconds (bench/logs.py).
    for key, value in event.items():
        if _secret_key(key):
            event[key] = "[redacted]"
        elif isinstance(value, str) and key != "timestamp":
            if "=" in value:
                value = event[key] = _SECRET_IN_TEXT.sub(r"\1[redacted]", value)
            if "@" in value:
                value = event[key] = _SECRET_IN_URL.sub(r"\1[redacted]\2", value)
            if ":" in value:
                event[key] = _SECRET_HEADER.sub(r"\1\2[redacted]", value)
    return event


def redacted(text: str) -> str:
    """``text`` with what the log lines mask masked (a URL's password, ``token=…``, a
    secret header): for a library's error shown outside a log line (``/readyz``)."""
    text = _SECRET_IN_TEXT.sub(r"\1[redacted]", text)
    text = _SECRET_IN_URL.sub(r"\1[redacted]\2", text)
    return _SECRET_HEADER.sub(r"\1\2[redacted]", text)


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    return processor


def _json(event: MutableMapping[str, Any], **_: Any) -> bytes:
    """One line of JSON: orjson (a fifth of the stdlib's time), anything it can't write
    as its ``repr``; the stdlib's encoder for what orjson refuses outright (an integer
    beyond 64 bits)."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(event, default=repr).encode()


def _json_text(event: MutableMapping[str, Any], **_: Any) -> str:
    return _json(event).decode()


# The libraries' loggers and the level each starts at: at info these write a line per
# connection or per request, which the services' own events already say.
QUIET_LIBRARIES = {
    "aiormq": logging.WARNING,
    "aio_pika": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "asyncpg": logging.WARNING,
    "aiosmtplib": logging.WARNING,
}


# What the loop's exception context names besides its message (asyncio's own keys, and
# aiohttp's for an unclosed session), written as fields.
LOOP_CONTEXT = (
    "future",
    "task",
    "handle",
    "protocol",
    "transport",
    "socket",
    "asyncgen",
    "client_session",
    "connector",
    "connections",
)


def configure_logging(service: str, level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    before: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_service(service),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    after: list[Processor] = [
        # The traceback first, so that its text is masked too: an HTTP client's error
        # names the URL it was asked for, query and all (aiohttp's connect timeout).
        structlog.processors.format_exc_info,
        _redact,
    ]
    # The standard library's records (aiohttp.server, asyncio, asyncpg, aio_pika,
    # py.warnings) through the same processors: one JSON line each, the traceback inside,
    # the logger's name as a field; none left to the stdlib's plain text on stderr.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *before,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=LOOP_CONTEXT),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *after,
                structlog.processors.JSONRenderer(serializer=_json_text),
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    structlog.configure(
        processors=[*before, *after, structlog.processors.JSONRenderer(serializer=_json)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Bytes straight to stdout's buffer (flushed each line), past the text layer.
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(quiet, numeric))
    # warnings.warn (a DeprecationWarning, aiohttp's ResourceWarning for an unclosed
    # session) as a record of the logger "py.warnings", not text on stderr.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """An exception nothing caught ends the process: its traceback as a JSON line too."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    get_logger("python").critical("uncaught_exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """A thread's (the trace exporter's, a resolver's) exception ends only that thread."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    get_logger("python").error(
        "uncaught_exception",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler ("Task exception was never retrieved", an
    error in a callback or a transport): the logger ``asyncio``, one JSON line, as the
    default handler would write it but with the traceback inside."""
    exception = context.get("exception")
    message = context.get("message") or "Unhandled exception in event loop"
    logging.getLogger("asyncio").error(
        message,
        extra={key: repr(context[key]) for key in LOOP_CONTEXT if key in context},
        exc_info=(type(exception), exception, exception.__traceback__)
        if isinstance(exception, BaseException)
        else None,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
