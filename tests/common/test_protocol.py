"""The body's deadline in every service's app (libs/common/protocol.py), in process: a body
that stops coming is answered 408 and its connection closed; one that comes is untouched."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.common.web import base_app

# Far above the app's deadline: a connection still open then fails the test.
BOUND = 30.0


async def _created(request: web.Request) -> web.Response:
    return web.json_response(await request.json(), status=201)


async def test_a_body_that_stops_coming_is_408_body_timeout_and_the_connection_closes() -> None:
    app = base_app("portals", body_timeout=0.2)
    app.router.add_post("/things", _created)
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /things HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n{"
        )
        try:
            answer = await asyncio.wait_for(reader.read(), BOUND)
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"408"
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["error"] == {
        "code": "body_timeout",
        "message": "The request body did not arrive in time. Please try again.",
    }


async def test_a_body_that_comes_is_read_as_ever() -> None:
    app = base_app("portals", body_timeout=0.2)
    app.router.add_post("/things", _created)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/things", json={"title": "x" * 50_000})
        assert response.status == 201
        assert (await response.json())["title"] == "x" * 50_000
        # The deadline was the request's alone: the same connection serves the next.
        assert (await client.post("/things", json={"title": "y"})).status == 201
