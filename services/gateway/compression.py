"""Gzip for the gateway's text answers (pages, the JSON API, scripts and stylesheets) when
the browser accepts it: on a slow phone connection a page of Invitations is a tenth of
its size. Pictures are compressed already, and small answers gain nothing.

BREACH (an attacker who sees the encrypted sizes and makes the victim's browser send
requests guesses a secret in a compressed page from how well it compresses next to what
the attacker put in it): pages carry one secret, the CSRF token, which every page masks
afresh (domain.mask_csrf), so it is never the same bytes twice. And a page another site
opened (Sec-Fetch-Site: cross-site, the only way a page of ours gets the victim's cookies
and the attacker's words together) is sent uncompressed, so nothing else on it, such as
whom a portal invited, can be guessed by size either. JSON is compressed whoever asks:
another site can't make a browser read the API with its cookies (a session needs the
X-CSRF-Token header, which a cross-site request can't send without CORS, which we never
allow), and a secret the API answers once (a new key, a webhook's signing secret) is in
the answer to a POST that only our pages' scripts or a key holder can send."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_response import ContentCoding

from .rendering import Handler

MIN_SIZE = 1024
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
    offered: dict[str, float] = {}
    for part in request.headers.get("Accept-Encoding", "").lower().split(","):
        coding, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding:
            offered[coding] = quality
    return offered.get("gzip", offered.get("*", 0.0)) > 0


def add_vary(response: web.StreamResponse, name: str) -> None:
    present = [v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if name.lower() not in present:
        current = response.headers.get("Vary")
        response.headers["Vary"] = f"{current}, {name}" if current else name


def _compressible(request: web.Request, response: web.StreamResponse) -> bool:
    if not isinstance(response, web.Response) or response.status in (204, 304):
        return False
    body = response.body
    if not isinstance(body, bytes | bytearray) or len(body) < MIN_SIZE:
        return False
    if "Content-Encoding" in response.headers or response.content_type not in COMPRESSIBLE:
        return False
    if response.content_type == "text/html":
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in OWN_NAVIGATION:
            return False
    return True


@web.middleware
async def compression_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if _compressible(request, response):
        # Whoever caches the answer keeps one copy per encoding.
        add_vary(response, "Accept-Encoding")
        if accepts_gzip(request):
            response.enable_compression(ContentCoding.gzip)
    return response
