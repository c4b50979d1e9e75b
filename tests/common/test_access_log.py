"""The access log (issue 18): one JSON line per request with the route's pattern, method,
status, duration and request id; probes at debug only. And clientpress_build_info."""

from __future__ import annotations

import platform
from collections.abc import AsyncIterator

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from libs.common import web as kit
from libs.common.errors import NotFound
from libs.common.metrics import release


async def _thing(request: web.Request) -> web.Response:
    if request.match_info["id"] == "missing":
        raise NotFound("No such thing.")
    return web.json_response({"id": request.match_info["id"]})


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    app = kit.base_app("portals")
    app.router.add_get("/things/{id}", _thing)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_one_line_per_request_with_route_status_duration_and_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        monkeypatch.setattr(kit, "log", structlog.get_logger("test"))
        ok = await client.get("/things/a-secret-id?token=abc", headers={"X-Request-ID": "req-1"})
        missing = await client.get("/things/missing")
    assert ok.status == 200 and missing.status == 404
    lines = [line for line in logs if line["event"] == "http_request"]
    assert len(lines) == 2
    first, second = lines
    assert first["route"] == "/things/{id}"  # the pattern: no id, no query string
    assert "a-secret-id" not in str(first) and "abc" not in str(first)
    assert (first["method"], first["status"], first["log_level"]) == ("GET", 200, "info")
    assert first["request_id"] == "req-1"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert second["status"] == 404
    assert second["request_id"] == missing.headers["X-Request-ID"]


async def test_probes_log_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    main = kit.base_app("portals")
    async with TestClient(TestServer(kit.management_app(main))) as management:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            monkeypatch.setattr(kit, "log", structlog.get_logger("test"))
            assert (await management.get("/healthz")).status == 200
    (line,) = [line for line in logs if line["event"] == "http_request"]
    assert (line["route"], line["log_level"]) == ("/healthz", "debug")


async def test_every_service_app_reports_its_build() -> None:
    kit.base_app("mailer")
    value = REGISTRY.get_sample_value(
        "clientpress_build_info",
        {"version": release(), "service": "mailer", "python": platform.python_version()},
    )
    assert value == 1.0
    assert release() != "unknown"
