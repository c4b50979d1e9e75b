"""Domain errors: plain exceptions with a machine-readable code and an HTTP status.

The app kit's error middleware turns them into ``{"error": {"code", "message"}}``."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(DomainError):
    status = 422
    code = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


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

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(DomainError):
    status = 503
    code = "unavailable"


_BY_STATUS: dict[int, type[DomainError]] = {
    cls.status: cls
    for cls in (InvalidInput, NotFound, Conflict, Gone, Unauthorized, Forbidden, Unavailable)
}


def from_status(status: int, code: str, message: str) -> DomainError:
    """Rebuild a domain error from another service's JSON error answer."""
    cls = _BY_STATUS.get(status, DomainError)
    err = cls(message, code=code)
    err.status = status
    return err
