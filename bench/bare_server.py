"""The portal-page ceiling: a bare aiohttp + asyncpg server doing one indexed query per
request (the portal by slug) and answering a small HTML page. Run as its own process:
``python -m bench.bare_server <database_url> <port>``."""

from __future__ import annotations

import html
import sys

import asyncpg
from aiohttp import web

QUERY = "SELECT title, content_html FROM portals.portals WHERE slug = $1"
POOL = web.AppKey("pool", asyncpg.Pool)


async def page(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(QUERY, request.match_info["slug"])
    if row is None:
        raise web.HTTPNotFound()
    body = f"<!doctype html><title>{html.escape(row['title'])}</title>{row['content_html']}"
    return web.Response(text=body, content_type="text/html")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(database_url: str) -> web.Application:
    app = web.Application()

    async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[POOL] = await asyncpg.create_pool(database_url, min_size=4, max_size=10)
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/client-portal/{slug}/", page)
    return app


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    web.run_app(
        create_app(sys.argv[1]),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
