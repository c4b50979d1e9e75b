"""Gzip for the gateway's text answers (pages, the JSON API, scripts and stylesheets) when
the browser accepts it: on a slow phone connection a page of Invitations is a tenth of
its size. Pictures are compressed already, and small answers gain nothing.

BREACH (an attacker who sees the encrypted sizes and makes the victim's browser send
requests guesses a secret in a compressed page from how well it compresses next to what
the attacker put in it): pages carry one secret, the CSRF token, which every page masks
afresh (domain.mask_csrf), so it is never the same bytes twice. And a page another site
opened (Sec-Fetch-Site: cross-site, the only way a page of ours gets the victim's cookies
and the attacker's words together) is sent uncompressed, so nothing else on it, such as
whom a portal invited, can be guessed by size either. So is a page whose request doesn't
say where it came from (no Sec-Fetch-Site: a browser from before 2023, whose request
another site may well have made): only our own navigations are gzipped. JSON is
compressed whoever asks: another site can't make a browser read the API with its
cookies (a session needs the X-CSRF-Token header, which a cross-site request can't send
without CORS, which we never allow), and a secret the API answers once (a new key, a
webhook's signing secret) is in the answer to a POST that only our pages' scripts or a key
holder can send."""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from libs.common.i18n import weighted

from .rendering import Handler

MIN_SIZE = 1024
SYNC_LIMIT = 32 * 1024
COMPRESSIBLE = frozenset(
    {
        "text/html",
        "text/css",
        "text/javascript",
        "application/javascript",
        "application/json",
        "text/csv",
        "text/plain",
        "image/svg+xml",
    }
)
OWN_NAVIGATION = frozenset({"same-origin", "none"})


def accepts_gzip(request: web.Request) -> bool:
    """Accept-Encoding names gzip (or *) without q=0 (RFC 9110 12.5.3)."""
    offered = {
        coding: quality
        for coding, quality in weighted(request.headers.get("Accept-Encoding"))
        if coding
    }
    return offered.get("gzip", offered.get("*", 0.0)) > 0


def add_vary(response: web.StreamResponse, name: str) -> None:
    present = [v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if name.lower() not in present:
        current = response.headers.get("Vary")
        response.headers["Vary"] = f"{current}, {name}" if current else name


def _compressible(response: web.StreamResponse) -> bool:
    if not isinstance(response, web.Response) or response.status in (204, 304):
        return False
    body = response.body
    if not isinstance(body, bytes | bytearray) or len(body) < MIN_SIZE:
        return False
    return "Content-Encoding" not in response.headers and response.content_type in COMPRESSIBLE


def _own_navigation(request: web.Request, response: web.Response) -> bool:
    """A page is gzipped only for our own links and the address bar (BREACH, above)."""
    if response.content_type != "text/html":
        return True
    return request.headers.get("Sec-Fetch-Site") in OWN_NAVIGATION


def gzip_body(body: bytes) -> bytes:
    """Gzip at zlib's default level, with a window no bigger than the body: the same bytes
    as the full 32 KB window for a page of a few KB at a third of the CPU (setting up the
    full window's tables costs more than compressing a small page)."""
    window = min(15, max(9, (len(body) - 1).bit_length()))
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + window, max(1, window - 7))
    return packer.compress(body) + packer.flush()


@web.middleware
async def compression_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if isinstance(response, web.Response) and _compressible(response):
        # Whoever caches the answer keeps one copy per encoding.
        add_vary(response, "Accept-Encoding")
        if accepts_gzip(request) and _own_navigation(request, response):
            body = bytes(response.body)  # type: ignore[arg-type]  # _compressible: bytes
            if len(body) > SYNC_LIMIT:
                # A big answer (an import's results) off the event loop: a few ms of CPU.
                loop = asyncio.get_running_loop()
                packed = await loop.run_in_executor(None, gzip_body, body)
            else:
                packed = gzip_body(body)
            response.body = packed
            response.headers["Content-Encoding"] = "gzip"
            response.headers.popall("Content-Length", None)
    return response
