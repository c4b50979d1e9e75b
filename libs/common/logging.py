"""structlog JSON logging with service, request_id and correlation_id on every line.

Secrets never reach a log line: the redaction processor masks any field whose name says
it holds one, and masks token-looking query strings in URLs."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_SECRET_KEYS = re.compile(r"(token|password|passwd|secret|hash|cookie|authorization|api_key)", re.I)
_SECRET_IN_TEXT = re.compile(r"((?:token|password|key)=)[^&\s\"']+", re.I)


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret: the names are the code's own, a few
    hundred at most, so each is searched once, not on every line."""
    return key != "event" and _SECRET_KEYS.search(key) is not None


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Values change, keys don't: the dict can be walked as it is.
    for key, value in event.items():
        if _secret_key(key):
            event[key] = "[redacted]"
        elif isinstance(value, str) and "=" in value:
            event[key] = _SECRET_IN_TEXT.sub(r"\1[redacted]", value)
    return event


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


def configure_logging(service: str, level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=numeric, force=True)
    # Library loggers (aiohttp.access, aio_pika) go through the same JSON renderer.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_service(service),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The traceback first, so that its text is masked too: an HTTP client's error
            # names the URL it was asked for, query and all (aiohttp's connect timeout).
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(serializer=_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Bytes straight to stdout's buffer (flushed each line), past the text layer.
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    for noisy in ("aiormq", "aio_pika", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
