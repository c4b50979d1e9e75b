"""The correlation id that follows one piece of work through HTTP calls and events."""

from __future__ import annotations

import math
import time
import uuid
from contextvars import ContextVar

import structlog

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
# The broker user that sent the event being handled (AMQP user_id, which RabbitMQ checks
# against the login); None over HTTP, or when the sender left user_id out.
sender_var: ContextVar[str | None] = ContextVar("sender", default=None)

# When the request being served must be answered by (time.monotonic()): its caller gives
# up then. None: no caller waits on a clock (the gateway's own requests, an event).
deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)

CORRELATION_HEADER = "X-Correlation-ID"
REQUEST_ID_HEADER = "X-Request-ID"
# The seconds the calling service still waits for this answer (libs/common/http.py).
TIMEOUT_HEADER = "X-Request-Timeout"


def current_correlation_id() -> str:
    value = correlation_id_var.get()
    if value is None:
        value = new_id()
        set_correlation_id(value)
    return value


def set_correlation_id(value: str) -> None:
    correlation_id_var.set(value)
    structlog.contextvars.bind_contextvars(correlation_id=value)


def set_sender(value: str | None) -> None:
    sender_var.set(value)


def current_sender() -> str | None:
    return sender_var.get()


def set_deadline(header: str | None) -> None:
    """The deadline a caller's TIMEOUT_HEADER sets from now (None: no deadline, as for a
    value that isn't a positive number of seconds)."""
    try:
        seconds = float(header) if header is not None else math.nan
    except ValueError:
        seconds = math.nan
    ok = math.isfinite(seconds) and seconds > 0
    deadline_var.set(time.monotonic() + seconds if ok else None)


def time_left() -> float | None:
    """The seconds until the caller of the request being served gives up, if one waits."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def new_id() -> str:
    return uuid.uuid4().hex


def clean_incoming_id(value: str | None) -> str | None:
    """Accept an id from outside only if it is short and plain, so logs can't be forged."""
    if value and len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value):
        return value
    return None
