"""Machine-readable details beside an error's code and message (an expiry time, when the
next email can go) survive the hop between services, a 429 keeps its Retry-After and a
405 its Allow."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.common.errors import Gone, NotFound, RateLimited, from_status
from libs.common.web import base_app, error_response


def test_details_go_beside_code_and_message_and_never_over_them() -> None:
    response = error_response(
        410, "invitation_expired", "Expired.", details={"expired_at": "2026-01-15T09:00:00+00:00"}
    )
    assert response.body is not None
    assert orjson.loads(response.body) == {
        "error": {
            "code": "invitation_expired",
            "message": "Expired.",
            "expired_at": "2026-01-15T09:00:00+00:00",
        }
    }
    sneaky = error_response(400, "x", "m", details={"code": "other", "message": "other"})
    assert sneaky.body is not None
    assert orjson.loads(sneaky.body) == {"error": {"code": "x", "message": "m"}}
    plain = error_response(404, "nope", "No.")
    assert plain.body is not None
    assert orjson.loads(plain.body) == {"error": {"code": "nope", "message": "No."}}


def test_from_status_rebuilds_details_and_rate_limits() -> None:
    gone = from_status(410, "invitation_expired", "Expired.", {"expired_at": "t"})
    assert isinstance(gone, Gone) and gone.details == {"expired_at": "t"}
    limited = from_status(429, "send_rate_limited", "Later.", {"retry_after": 754})
    assert isinstance(limited, RateLimited) and limited.retry_after == 754
    assert limited.status == 429 and limited.code == "send_rate_limited"
    assert from_status(429, "x", "y").retry_after == 1  # type: ignore[attr-defined]
    assert from_status(429, "x", "y", {"retry_after": "soon"}).retry_after == 1  # type: ignore[attr-defined]
    missing = from_status(404, "gone", "No.")
    assert isinstance(missing, NotFound) and missing.details == {}


async def _listed(request: web.Request) -> web.Response:
    return web.json_response({"items": []})


async def test_a_method_the_route_lacks_is_405_json_with_allow() -> None:
    app = base_app("portals")
    app.router.add_get("/things", _listed)
    app.router.add_post("/things", _listed)
    async with TestClient(TestServer(app)) as client:
        for method in ("DELETE", "OPTIONS", "TRACE"):
            response = await client.request(method, "/things")
            assert response.status == 405, method
            assert (await response.json())["error"]["code"] == "method_not_allowed"
            # RFC 9110 15.5.6: a 405 must say which methods the resource takes.
            assert set(response.headers.get("Allow", "").split(", ")) == {"GET", "HEAD", "POST"}


async def _created(request: web.Request) -> web.Response:
    return web.json_response(await request.json(), status=201)


async def test_a_body_over_the_apps_limit_is_413_body_too_large_with_the_limit() -> None:
    app = base_app("portals", client_max_size=64 * 1024)
    app.router.add_post("/things", _created)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/things", json={"title": "x" * 70_000})
        assert response.status == 413
        assert (await response.json())["error"] == {
            "code": "body_too_large",
            "message": "The request body must be at most 64 KiB.",
        }
        assert (await client.post("/things", json={"title": "x"})).status == 201
