"""Where a webhook may go: the URL's host resolved and every address checked, when an
endpoint is added and again at every delivery (the connector resolves through the guard
and connects only to the addresses it checked, so a DNS answer that changes in between,
rebinding, can't slip a private address in)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .domain import RefusedTarget, check_addresses, check_url, ip_literal


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that isn't http(s), doesn't resolve, or reaches a loopback, private
    or link-local address (unless ``allow_private``)."""
    host, port = check_url(url)
    if allow_private:
        return
    if ip_literal(host):
        check_addresses(host, [host.strip("[]")])
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise RefusedTarget(f"{host} does not resolve.", "unresolvable", host) from None
    check_addresses(host, [str(info[4][0]) for info in infos])


class GuardedResolver(AbstractResolver):
    """Resolves as ``inner`` does and refuses the whole answer when any address in it is
    not public. (IP literals never reach a resolver: the sender checks those itself.)"""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [str(r["host"]) for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_problem(url: str) -> str | None:
    """Why the URL's host, when an IP literal, must not be reached; None otherwise."""
    try:
        host, _ = check_url(url)
        if ip_literal(host):
            check_addresses(host, [host.strip("[]")])
    except RefusedTarget as exc:
        return str(exc)
    return None
