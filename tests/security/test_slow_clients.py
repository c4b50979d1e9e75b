"""Slow and malformed clients at the gateway's HTTP layer (libs/common/protocol.py): a head
or a body that never ends, and a request aiohttp's parser refuses."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest

from tests.support.env import TestEnv, free_port
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.integration

API_KEY = "slow-clients-api-key-0123456789"
# Small, so that the tests wait little; the waits below are bounds far above them (and far
# below what aiohttp gave before: 75 s for a head, a body for ever).
HEAD_SECONDS = "1"
BODY_SECONDS = "1"
BOUND = 30.0


@pytest.fixture(scope="module")
async def gateway(migrated_schemas: TestEnv) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = migrated_schemas.service_env(
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        GATEWAY_API_KEY=API_KEY,
        HTTP_HEAD_TIMEOUT_SECONDS=HEAD_SECONDS,
        HTTP_BODY_TIMEOUT_SECONDS=BODY_SECONDS,
    )
    service = ServiceProcess("gateway", port, env)
    service.start()
    try:
        await service.wait_ready()
        yield service
    finally:
        await asyncio.to_thread(service.stop)


async def _connect(
    gateway: ServiceProcess, address: str = "127.0.0.2"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client at another address than the test's own (the hostile one)."""
    return await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(address, 0))


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the gateway sends until it closes the connection; a connection still open
    after BOUND seconds fails the test."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND)
    except TimeoutError:
        raise AssertionError(f"the gateway still held the connection after {BOUND} s") from None


def _answer(raw: bytes) -> tuple[int, str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1").lower(), body


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(gateway: ServiceProcess) -> None:
    """Slowloris: a request line, then a header a byte every half second. aiohttp held it
    for its fixed 75 s whatever the service wanted; HTTP_HEAD_TIMEOUT_SECONDS bounds it."""
    reader, writer = await _connect(gateway)
    writer.write(b"GET /login HTTP/1.1\r\nHost: clientpress\r\n")

    async def trickle() -> None:
        for byte in b"X-Slow: " + b"a" * 200:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)

    dripping = asyncio.create_task(trickle())
    try:
        assert await _until_closed(reader) == b""  # closed, nothing answered
    finally:
        dripping.cancel()
        writer.close()


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/portals", f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json"),
        ("/login", "Content-Type: application/x-www-form-urlencoded"),
    ],
    ids=["api", "form"],
)
async def test_a_body_that_never_arrives_is_answered_408_and_its_connection_closed(
    gateway: ServiceProcess, path: str, headers: str
) -> None:
    """Content-Length: 60000 and one byte: aiohttp waited for the rest for ever, the
    connection and its file descriptor held, so that some 20,000 such clients (this
    machine's limit) left none for anyone. Now the body has HTTP_BODY_TIMEOUT_SECONDS."""
    reader, writer = await _connect(gateway)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: clientpress\r\nOrigin: {gateway.url}\r\n{headers}\r\n"
        "Content-Length: 60000\r\n\r\n{".encode()
    )
    try:
        status, head, body = _answer(await _until_closed(reader))
    finally:
        writer.close()
    assert status == 408
    assert "connection: close" in head
    if path.startswith("/api/"):
        assert json.loads(body)["error"]["code"] == "body_timeout"
    else:
        assert "text/html" in head
        assert b"took too long to arrive" in body


async def test_a_person_is_answered_while_bodies_hang(gateway: ServiceProcess) -> None:
    """Held bodies take nothing a person needs: their login page comes while 50 other
    connections wait on bodies (and then those connections are gone)."""
    held = []
    for _ in range(50):
        reader, writer = await _connect(gateway, "127.0.0.3")
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: clientpress\r\nContent-Length: 60000\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Origin: {gateway.url}\r\n\r\n".encode()
        )
        held.append((reader, writer))
    person_reader, person_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    person_writer.write(b"GET /login HTTP/1.1\r\nHost: clientpress\r\nConnection: close\r\n\r\n")
    status, _, page = _answer(await _until_closed(person_reader))
    person_writer.close()
    assert status == 200 and b"Log In" in page
    for reader, writer in held:
        assert _answer(await _until_closed(reader))[0] == 408
        writer.close()


async def test_a_request_the_parser_refuses_is_logged_as_one_line_without_its_bytes(
    gateway: ServiceProcess,
) -> None:
    """aiohttp logged a refused request as a plain-text traceback at error level, quoting
    the offending line: an API key followed by a stray control byte went into the log."""
    secret = "cpk_live_secret_in_a_broken_header_line"
    start = gateway.log_path.stat().st_size
    reader, writer = await _connect(gateway)
    writer.write(
        f"GET /api/v1/portals HTTP/1.1\r\nHost: clientpress\r\n"
        f"Authorization: Bearer {secret}\x01\r\n\r\n".encode()
    )
    status, _, _ = _answer(await _until_closed(reader))
    writer.close()
    assert status == 400

    def logged() -> str:
        with gateway.log_path.open("rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    def refused() -> list[dict[str, object]]:
        lines = logged().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if e.get("event") == "http_request_refused"]

    for _ in range(int(BOUND / 0.1)):  # the log is written by another process
        if any(e["reason"] == "malformed" for e in refused()):
            break
        await asyncio.sleep(0.1)
    text = logged()
    assert secret not in text
    assert "Traceback" not in text
    line = next(e for e in refused() if e["reason"] == "malformed")
    assert line["peer"] == "127.0.0.2"
    assert line["status"] == 400
    assert line["detail"] == "Invalid header value char"


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /login HTTP/1.1\r\nHost: clientpress\r\nX-Broken: a\x01b\r\n\r\n",
        b"GET /login HTTP/1.1\r\nHost: clientpress\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /login HTTP/9.9\r\nHost: clientpress\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: clientpress\r\n\r\n",
    ],
    ids=["control-byte", "long-header", "unknown-version", "asterisk-target"],
)
async def test_a_request_the_parser_refuses_is_answered_without_the_servers_version(
    gateway: ServiceProcess, request_head: bytes
) -> None:
    """aiohttp answers these itself, before any route or on_prepare runs: its answer named
    "Python/3.11 aiohttp/3.14.5", the versions a scanner looks up in advisories, which
    every other answer hides (SECURITY.md: Server is ClientPress on every answer)."""
    reader, writer = await _connect(gateway)
    writer.write(request_head)
    status, head, _ = _answer(await _until_closed(reader))
    writer.close()
    assert status == 400
    assert "server: clientpress\r\n" in head + "\r\n", head
    assert "aiohttp" not in head and "python" not in head, head
    assert "x-content-type-options: nosniff" in head, head


# A request a proxy in front may read as ending elsewhere than we would, each followed by
# the request a smuggler hides behind it (README: "Bodies and parameters are read strictly").
SMUGGLED = b"GET /admin/portals HTTP/1.1\r\nHost: clientpress\r\n\r\n"
LOGIN = b"POST /login HTTP/1.1\r\nHost: clientpress\r\n"


@pytest.mark.parametrize(
    ("request_head", "answers"),
    [
        (LOGIN + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1),
        (LOGIN + b"Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n", 1),
        (LOGIN + b"Content-Length: 4\r\nContent-Length: 52\r\n\r\nabcd", 1),
        (LOGIN + b"Content-Length: 4, 4\r\n\r\nabcd", 1),
        (LOGIN + b"Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\nabcd", 1),
        (LOGIN + b"Content-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\nabcd", 1),
        (LOGIN + b"Transfer-Encoding: chunked\r\n\r\n1000000000000000004\r\nabcd\r\n0\r\n\r\n", 1),
        (LOGIN + b"Transfer-Encoding: chunked\r\n\r\n4\nabcd\n0\n\n", 1),
        (
            LOGIN + b"".join(b"X-%d: a\r\n" % n for n in range(128)) + b"Content-Length: 0\r\n\r\n",
            1,
        ),
        # The control: well framed, the second request is read and answered too.
        (LOGIN + b"Content-Length: 4\r\n\r\nabcd", 2),
    ],
    ids=[
        "content-length-then-chunked",
        "chunked-then-content-length",
        "two-content-lengths",
        "content-length-list",
        "obs-fold",
        "space-before-colon",
        "chunk-size-overflow",
        "chunk-lines-without-cr",
        "129-headers",
        "well-framed",
    ],
)
async def test_a_request_framed_two_ways_is_refused_and_nothing_after_it_is_read(
    gateway: ServiceProcess, request_head: bytes, answers: int
) -> None:
    """README: a request that isn't HTTP/1.1 as RFC 9112 writes it (Content-Length beside
    Transfer-Encoding, a bad chunk size, more than 128 headers) is refused by the parser,
    the connection closed. Read either way instead, a proxy in front that read it the other
    way would hand us the bytes after it as a second request of its own: one answer, a 400,
    and the connection closed mean nothing after it was read."""
    reader, writer = await _connect(gateway)
    writer.write(request_head + SMUGGLED)
    raw = await _until_closed(reader)
    writer.close()
    # A 400 quotes the bytes it refused, the smuggled request line among them.
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} ", raw)) == answers, raw
    # The smuggled request, had it been read: an admin page's redirect to Log In.
    assert (b" 303 See Other\r\n" in raw) == (answers == 2), raw
    if answers == 1:
        assert _answer(raw)[0] == 400, raw
