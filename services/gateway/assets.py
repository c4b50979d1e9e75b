"""The static files (static/): read once at start, each named in pages by its content's
digest (/static/app.3f9c….css), which browsers keep for a year without asking again; a
new release's file has a new name. Gzipped once here for the browsers that accept it."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web

from .compression import COMPRESSIBLE, accepts_gzip, add_vary

# A fingerprinted URL names one content for good; the plain one (/static/app.css, in
# pages older than the fingerprints, bookmarks, scripts) and an unknown fingerprint (a
# page from another release's replica during a rolling update) get the current file, to
# be asked again each time (cheaply: 304 while it hasn't changed).
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
DIGEST_CHARS = 16
# The types of what static/ holds, the same on every machine (mimetypes reads the host's
# /etc/mime.types: .js is application/javascript on some, text/javascript on others).
TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
FINGERPRINTED = re.compile(
    r"^(?P<stem>[A-Za-z0-9_-]+)\.(?P<digest>[0-9a-f]{16})\.(?P<ext>[a-z0-9]+)$"
)


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    url: str


def _load(path: Path) -> Asset:
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:DIGEST_CHARS]
    content_type = (
        TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    gzipped = None
    if content_type in COMPRESSIBLE:
        content_type += "; charset=utf-8"
        # mtime=0: the same bytes on every replica and every start.
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        gzipped = packed if len(packed) < len(body) else None
    return Asset(
        name=path.name,
        body=body,
        gzipped=gzipped,
        content_type=content_type,
        etag=f'"{digest}"',
        url=f"/static/{path.stem}.{digest}{path.suffix}",
    )


class Assets:
    """The static folder, in memory (a few tens of KB)."""

    def __init__(self, folder: Path) -> None:
        self.by_name = {p.name: _load(p) for p in sorted(folder.iterdir()) if p.is_file()}

    def url(self, name: str) -> str:
        """``static("app.css")`` in templates: the fingerprinted URL of a file."""
        return self.by_name[name].url

    def find(self, requested: str) -> tuple[Asset, bool] | None:
        """The file a /static/ name asks for, and whether the name fixes its content."""
        plain = self.by_name.get(requested)
        if plain is not None:
            return plain, False
        match = FINGERPRINTED.match(requested)
        if match is None:
            return None
        found = self.by_name.get(f"{match['stem']}.{match['ext']}")
        if found is None:
            return None
        return found, found.url.endswith("/" + requested)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        found = self.find(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        asset, fixed = found
        headers = {"ETag": asset.etag, "Cache-Control": IMMUTABLE if fixed else REVALIDATE}
        if _tags(request.headers.get("If-None-Match", "")) & {asset.etag, "*"}:
            response = web.Response(status=304, headers=headers)
        elif asset.gzipped is not None and accepts_gzip(request):
            headers["Content-Encoding"] = "gzip"
            response = web.Response(body=asset.gzipped, headers=headers)
        else:
            response = web.Response(body=asset.body, headers=headers)
        if response.status == 200:
            response.headers["Content-Type"] = asset.content_type
        if asset.gzipped is not None:
            add_vary(response, "Accept-Encoding")
        return response


def _tags(header: str) -> set[str]:
    """If-None-Match's entity tags, weak ones as their strong form (RFC 9110 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def install(app: web.Application, env: jinja2.Environment, folder: Path) -> None:
    assets = Assets(folder)
    env.globals["static"] = assets.url
    app.router.add_get("/static/{name}", assets.serve, name="static")
