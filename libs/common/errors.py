"""Domain errors: plain exceptions with a machine-readable code and an HTTP status.

The app kit's error middleware turns them into ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DomainError(Exception):
    """``details``: more machine-readable facts for the answer (a time, a count), sent
    beside ``code`` and ``message`` in the error object and read back by ServiceClient."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})


class InvalidInput(DomainError):
    status = 422
    code = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class TooLarge(DomainError):
    status = 413
    code = "too_large"


class Gone(DomainError):
    status = 410
    code = "gone"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


class Unavailable(DomainError):
    status = 503
    code = "unavailable"


_BY_STATUS: dict[int, type[DomainError]] = {
    cls.status: cls
    for cls in (InvalidInput, NotFound, Conflict, Gone, Unauthorized, Forbidden, Unavailable)
}


def from_status(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> DomainError:
    """Rebuild a domain error from another service's JSON error answer (a 429 keeps its
    ``retry_after`` seconds, from the details)."""
    err: DomainError
    if status == RateLimited.status:
        raw = (details or {}).get("retry_after")
        wait = int(raw) if isinstance(raw, int | float) and raw >= 1 else 1
        err = RateLimited(message, retry_after=wait, code=code, details=details)
    else:
        err = _BY_STATUS.get(status, DomainError)(message, code=code, details=details)
    err.status = status
    return err
