"""Import Clients: a portal's page for inviting many people from a CSV file. The page's
script (static/import.js) reads the file, asks the batch API for a preview, then sends
in pieces with a progress bar; the role gate is in security._gate, for every /admin path."""

from __future__ import annotations

from aiohttp import web

from ..handlers.bulk import COLUMN_ALIASES, MAX_ROWS
from ..rendering import render
from ..state import UPSTREAM

ID = "{id:[0-9a-fA-F-]{36}}"

routes = web.RouteTableDef()


@routes.get(f"/admin/portals/{ID}/import")
async def import_clients(request: web.Request) -> web.StreamResponse:
    portal = await request.app[UPSTREAM].portals.get(request.match_info["id"])
    return render(
        request,
        "admin/import.html",
        {
            "portal": portal,
            "nav": "portals",
            "max_rows": MAX_ROWS,
            "column_aliases": COLUMN_ALIASES,
        },
    )
