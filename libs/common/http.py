"""Calls between services over HTTP: correlation id forwarded, JSON errors turned back
into domain errors, and an unreachable service reported as Unavailable (503)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from .context import CORRELATION_HEADER, current_correlation_id
from .errors import DomainError, Unavailable, from_status


class ServiceClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, name: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.name = name

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        all_headers = {CORRELATION_HEADER: current_correlation_id()}
        if headers:
            all_headers.update(headers)
        data = orjson.dumps(json) if json is not None else None
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, self.base_url + path, data=data, params=params, headers=all_headers
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(
                f"The {self.name} service is unavailable.", code=f"{self.name}_unavailable"
            ) from exc
        payload = orjson.loads(body) if body else None
        if status >= 400:
            error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            raise from_status(
                status,
                str(error.get("code", "error")),
                str(error.get("message", f"{self.name} answered {status}")),
            )
        return payload


def new_session(timeout: float = 10.0, limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=limit),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


__all__ = ["DomainError", "ServiceClient", "new_session"]
