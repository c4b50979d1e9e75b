"""Domain errors: plain exceptions with a machine-readable code and an HTTP status.

The app kit's error middleware turns them into ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar


class DomainError(Exception):
    """``details``: more machine-readable facts for the answer (a time, a count), sent
    beside ``code`` and ``message`` in the error object and read back by ServiceClient."""

    status = 400
    code = "bad_request"
    # Response headers every answer of this kind carries (a 415's Accept-Encoding).
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(
        self, message: str, *, code: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        """A kind declares its HTTP status and default code on its class line; a narrower
        kind (``class AccountExists(Conflict)``) keeps its parent's unless it names its own."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code


class InvalidInput(DomainError, status=422, code="invalid_input"):
    """Input that breaks a rule: a field the service cannot accept."""


class Unreadable(DomainError, status=400, code="invalid_json"):
    """A body that can't be read as what it says it is: not JSON, not UTF-8, empty."""


class UnsupportedMediaType(DomainError, status=415, code="unsupported_media_type"):
    """A body declared as another format (a form, text, XML) where JSON is expected."""


class NotFound(DomainError, status=404, code="not_found"):
    """No such thing, or not one the caller may see."""


class Conflict(DomainError, status=409, code="conflict"):
    """The change clashes with the current state (a slug taken, a row changed)."""


class TooLarge(DomainError, status=413, code="too_large"):
    """A body or file over its size limit."""


class Gone(DomainError, status=410, code="gone"):
    """A thing that existed but is no more (a link expired or used)."""


class Unauthorized(DomainError, status=401, code="unauthorized"):
    """The caller did not prove who it is."""


class Forbidden(DomainError, status=403, code="forbidden"):
    """The caller proved who it is but may not do this."""


class RateLimited(DomainError, status=429, code="rate_limited"):
    """Too many attempts; ``retry_after`` says how many seconds to wait."""

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


class Unavailable(DomainError, status=503, code="unavailable"):
    """A service this one needs did not answer; try again."""


_BY_STATUS: dict[int, type[DomainError]] = {
    cls.status: cls
    for cls in (
        InvalidInput,
        NotFound,
        Conflict,
        Gone,
        Unauthorized,
        Forbidden,
        UnsupportedMediaType,
        Unavailable,
    )
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
