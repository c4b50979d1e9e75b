"""The management app (/healthz, /readyz, /metrics) of an app a test runs in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.common.web import management_app


@asynccontextmanager
async def management_client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of ``app``'s management port; ``app`` must already be started."""
    async with TestClient(TestServer(management_app(app))) as client:
        yield client
