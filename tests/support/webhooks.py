"""A webhook receiver for tests: a real aiohttp server on a loopback address that records
what it is sent and answers what the test asks for; and the Standard Webhooks check,
written here from the specification, independently of services/mailer/webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

# The spec's advice: refuse a timestamp further than five minutes from now.
TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


def verify(secret: str, received: Received, now: float | None = None) -> bool:
    """Whether one of the ``v1,`` signatures is the HMAC-SHA256, keyed with the base64
    after ``whsec_``, of ``{webhook-id}.{webhook-timestamp}.{body}``, and the timestamp is
    fresh."""
    assert secret.startswith("whsec_"), secret
    key = base64.b64decode(secret[len("whsec_") :])
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    content = f"{msg_id}.{timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for candidate in received.headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@dataclass
class Receiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    # Statuses to answer, in order; then 200 for everything.
    answers: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(
            Received({k.lower(): v for k, v in request.headers.items()}, await request.read())
        )
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.received if r.json.get("type") == event_type]

    async def wait_for(
        self, ready: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> list[Received]:
        """Poll until ``ready(received)`` (a bound, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(self.received):
                return list(self.received)
            await asyncio.sleep(0.02)
        raise AssertionError(f"the receiver never got there; it has {self.received!r}")


@asynccontextmanager
async def receiver(host: str = "127.0.0.1", path: str | None = None) -> AsyncIterator[Receiver]:
    # A path of its own: a port can come round again in one session, and an earlier
    # test's endpoint, still subscribed, must not deliver into this receiver.
    path = path or f"/hooks/{uuid.uuid4().hex}"
    got = Receiver()
    app = web.Application()
    app.router.add_post(path, got.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"http://{host}:{port}{path}"
    try:
        yield got
    finally:
        await runner.cleanup()
