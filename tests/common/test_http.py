"""ServiceClient (libs/common/http.py) when the called service refuses this one's proof:
a fault of the deployment (keys, clocks, the callers table), never of the request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.context import set_deadline
from libs.common.errors import Unavailable
from libs.common.http import ServiceClient, service_sessions
from libs.common.service_auth import (
    ServiceKeys,
    TokenSigner,
    encode_private,
    generate,
    parse_public_table,
    public_table_text,
)
from libs.common.settings import CommonSettings
from libs.common.web import base_app, json_response, require_service_proof

KEYS = generate()
TABLE = public_table_text(KEYS)


@pytest.fixture
async def identity() -> AsyncIterator[str]:
    """Identity with one route, which only the gateway may call."""

    async def hello(_: web.Request) -> web.Response:
        return json_response({"hello": "gateway"})

    settings = CommonSettings.model_validate(
        {"service_key": encode_private(KEYS["identity"]), "service_public_keys": TABLE}
    )
    app = base_app("identity")
    app.router.add_get("/hello", hello)
    require_service_proof(app, settings, {"GET /hello": {"gateway"}})
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def signer(service: str, key: Ed25519PrivateKey | None = None) -> TokenSigner:
    return TokenSigner(ServiceKeys(service, key or KEYS[service], parse_public_table(TABLE)))


async def test_a_refused_proof_is_the_service_unavailable_and_its_reason_is_logged(
    identity: str,
) -> None:
    """A gateway whose key identity doesn't know (a rotation half done) or whose clock is
    far off passed identity's 401 service_auth_required, with its message about the
    internal API, to the person or program asking: an /api/v1 client read that its own
    credentials were refused. It is a 503 like any service out of reach, the reason in
    the log for the operator."""
    async with aiohttp.ClientSession() as session:
        good = ServiceClient(session, identity, "identity", signer=signer("gateway"))
        assert await good.call("GET", "/hello") == {"hello": "gateway"}
        for caller, key, status, why in (
            ("gateway", Ed25519PrivateKey.generate(), 401, "the signature is not gateway's"),
            ("mailer", None, 403, "The mailer service may not call GET /hello"),
        ):
            client = ServiceClient(session, identity, "identity", signer=signer(caller, key))
            with structlog.testing.capture_logs() as logs, pytest.raises(Unavailable) as refused:
                await client.call("GET", "/hello")
            assert (refused.value.status, refused.value.code) == (503, "identity_unavailable")
            assert "internal API" not in str(refused.value)
            [entry] = [e for e in logs if e["event"] == "internal_call_refused"]
            assert entry["log_level"] == "error"
            assert entry["service"] == "identity" and entry["status"] == status
            assert why in entry["reason"]


async def test_an_answer_that_is_not_json_is_the_service_unavailable() -> None:
    """A proxy or mesh between the services answers with a page of its own (Envoy's
    "upstream connect error", an ingress's 502 HTML): the caller raised orjson's
    JSONDecodeError, and the gateway answered an /api/v1 client 500 "internal"."""

    async def proxied(request: web.Request) -> web.Response:
        status = int(request.query["status"])
        return web.Response(status=status, text="upstream connect error", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/users", proxied)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("")).rstrip("/")
            client = ServiceClient(session, url, "identity", signer=signer("gateway"))
            for status in ("503", "404", "200"):
                with structlog.testing.capture_logs() as logs, pytest.raises(Unavailable) as out:
                    await client.call("GET", "/users", params={"status": status})
                assert (out.value.status, out.value.code) == (503, "identity_unavailable")
                [entry] = [e for e in logs if e["event"] == "internal_answer_unreadable"]
                assert entry["status"] == int(status) and entry["service"] == "identity"
                assert entry["content_type"].startswith("text/plain")
    finally:
        await server.close()


async def test_a_service_that_hangs_holds_only_its_own_connections() -> None:
    """Portals hangs under more concurrent calls than a pool holds (100): the calls to
    identity still get a connection at once. With one pool for both they waited for one
    and failed with them (tests/faults/test_slow_upstream.py on the whole stack)."""
    hang = asyncio.Event()

    async def hanging(_: web.Request) -> web.Response:
        await hang.wait()
        return json_response({})

    async def hello(_: web.Request) -> web.Response:
        return json_response({"hello": "gateway"})

    slow, quick = web.Application(), web.Application()
    slow.router.add_get("/portals", hanging)
    quick.router.add_get("/hello", hello)
    servers = [TestServer(slow), TestServer(quick)]
    for server in servers:
        await server.start_server()
    try:
        async with service_sessions("portals", "identity") as sessions:
            portals, identity = (
                ServiceClient(
                    sessions[name],
                    str(server.make_url("")).rstrip("/"),
                    name,
                    signer=signer("gateway"),
                )
                for name, server in zip(("portals", "identity"), servers, strict=True)
            )
            held = [asyncio.create_task(portals.call("GET", "/portals")) for _ in range(120)]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            assert await asyncio.wait_for(identity.call("GET", "/hello"), 5) == {"hello": "gateway"}
            assert time.monotonic() - started < 1.0
            assert not any(task.done() for task in held)
            hang.set()
            await asyncio.gather(*held)
    finally:
        hang.set()
        for server in servers:
            await server.close()


async def test_a_call_made_for_a_caller_ends_before_that_caller_gives_up() -> None:
    """Serving a request whose caller waits 3 s more (X-Request-Timeout, set by the
    service proof), a call waits at most 3 s less ANSWER_MARGIN and tells its callee so;
    with less than the margin left it isn't made at all. Without a caller's clock, the
    session's timeout alone."""
    seen: list[str | None] = []

    async def slow(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Request-Timeout"))
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return json_response({})

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = TestServer(app)
    await server.start_server()
    try:
        async with service_sessions("portals") as sessions:
            url = str(server.make_url("")).rstrip("/")
            client = ServiceClient(sessions["portals"], url, "portals", signer=signer("gateway"))
            await client.call("GET", "/slow")
            assert seen.pop() == "10.000"  # new_session's
            set_deadline("3")
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.call("GET", "/slow", params={"sleep": "5"})
            assert 2.3 < time.monotonic() - started < 2.8
            assert 2.4 < float(seen.pop() or 0) <= 2.5
            set_deadline("0.4")
            with pytest.raises(Unavailable):
                await client.call("GET", "/slow")
            assert seen == []
    finally:
        set_deadline(None)
        await server.close()
