"""Request bodies sent encoded (Content-Encoding, a transfer coding other than chunked), at
a real gateway and a real internal service started as production starts them
(libs/common/runner.py): no service reads a compressed body, so one is refused before it
is read, let alone inflated."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import zlib
from collections.abc import AsyncIterator

import pytest

from tests.support.env import TestEnv, free_port
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.integration

API_KEY = "request-bodies-api-key-0123456789"
BOUND = 30.0
PORTAL = b'{"title": "Compressed", "status": "active"}'
# A bomb: 1 GiB of spaces after a JSON opening, some 1 MiB as gzip.
INFLATED_MIB = 1024


@pytest.fixture(scope="module")
async def gateway(migrated_schemas: TestEnv) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = migrated_schemas.service_env(
        PUBLIC_URL=f"http://127.0.0.1:{port}", GATEWAY_API_KEY=API_KEY
    )
    async with _running(ServiceProcess("gateway", port, env)) as service:
        yield service


@pytest.fixture(scope="module")
async def portals(migrated_schemas: TestEnv) -> AsyncIterator[ServiceProcess]:
    async with _running(
        ServiceProcess("portals", free_port(), migrated_schemas.service_env())
    ) as service:
        yield service


class _running:
    def __init__(self, service: ServiceProcess) -> None:
        self.service = service

    async def __aenter__(self) -> ServiceProcess:
        self.service.start()
        try:
            await self.service.wait_ready()
        except BaseException:
            await asyncio.to_thread(self.service.stop)
            raise
        return self.service

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.service.stop)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    parts = [packer.compress(b'{"title": "')]
    spaces = b" " * (1024 * 1024)
    parts.extend(packer.compress(spaces) for _ in range(INFLATED_MIB))
    parts.append(packer.compress(b'"}') + packer.flush())
    return b"".join(parts)


async def _send(service: ServiceProcess, head: str, body: bytes) -> tuple[int, str, bytes]:
    """One request, ``head`` its request line and headers (without Host and the blank line);
    the status, the lower-cased header block and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(
        f"{head}\r\nHost: clientpress\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        raw = await asyncio.wait_for(reader.read(), BOUND)
    finally:
        writer.close()
    answer, _, content = raw.partition(b"\r\n\r\n")
    return int(answer.split()[1]), answer.decode("latin-1").lower(), content


def _cpu_seconds(service: ServiceProcess) -> float:
    assert service.proc is not None
    with open(f"/proc/{service.proc.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _api_head(gateway: ServiceProcess, encoding: str, *, key: bool = True) -> str:
    auth = f"Authorization: Bearer {API_KEY}\r\n" if key else ""
    return (
        f"POST /api/v1/portals HTTP/1.1\r\n{auth}Origin: {gateway.url}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {encoding}"
    )


def _refused_encoding(status: int, head: str, body: bytes) -> None:
    assert status == 415, body
    assert "application/json" in head
    assert json.loads(body)["error"]["code"] == "unsupported_content_encoding"
    assert "accept-encoding: identity" in head  # RFC 7694


async def test_a_decompression_bomb_is_refused_unread(gateway: ServiceProcess, bomb: bytes) -> None:
    """1 MiB that inflates to 1 GiB, with no key: aiohttp inflated all of it (refused or
    not, it reads what is left of a body before closing), some 3 s of the gateway's CPU for
    every MiB anyone sent."""
    before = _cpu_seconds(gateway)
    answer = await _send(gateway, _api_head(gateway, "gzip", key=False), bomb)
    spent = _cpu_seconds(gateway) - before
    # Reading the compressed MiB costs milliseconds; inflating it took seconds.
    assert spent < 1.0, f"the gateway spent {spent:.2f} s of CPU on a 1 MiB body"
    _refused_encoding(*answer)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(PORTAL)),
        ("deflate", PORTAL),  # declared, not done: aiohttp's error went out as a 500
        ("br", PORTAL),  # aiohttp's plain-text 400: "Please install `Brotli`"
        ("zstd", PORTAL),
        ("compress", PORTAL),  # a coding aiohttp doesn't know: it read the body as it was
        ("gzip, gzip", PORTAL),
        ("x-gzip", PORTAL),
    ],
)
async def test_an_encoded_api_body_is_415_in_json(
    gateway: ServiceProcess, encoding: str, body: bytes
) -> None:
    _refused_encoding(*await _send(gateway, _api_head(gateway, encoding), body))


async def test_identity_is_no_encoding(gateway: ServiceProcess) -> None:
    status, _, body = await _send(gateway, _api_head(gateway, "identity"), b"[]")
    assert status == 422, body  # read, as JSON: an array is not a portal
    assert json.loads(body)["error"]["code"] == "invalid_input"


async def test_an_encoded_form_is_refused_with_a_page(gateway: ServiceProcess) -> None:
    status, head, body = await _send(
        gateway,
        f"POST /login HTTP/1.1\r\nOrigin: {gateway.url}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip",
        gzip.compress(b"email=a%40example.com&password=x"),
    )
    assert status == 415
    assert "text/html" in head
    assert b"without Content-Encoding" in body


async def test_a_transfer_coding_other_than_chunked_is_501(gateway: ServiceProcess) -> None:
    """``Transfer-Encoding: gzip, chunked``: aiohttp took the chunks and ignored the gzip,
    reading the body as something it wasn't (a proxy in front may have read it otherwise)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"POST /api/v1/portals HTTP/1.1\r\nHost: clientpress\r\nConnection: close\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: gzip, chunked\r\n\r\n{len(PORTAL):x}\r\n".encode()
        + PORTAL
        + b"\r\n0\r\n\r\n"
    )
    try:
        raw = await asyncio.wait_for(reader.read(), BOUND)
    finally:
        writer.close()
    answer, _, content = raw.partition(b"\r\n\r\n")
    assert int(answer.split()[1]) == 501, content
    assert json.loads(content)["error"]["code"] == "unsupported_transfer_encoding"


async def test_an_internal_service_refuses_a_bomb_before_asking_for_proof(
    portals: ServiceProcess, bomb: bytes
) -> None:
    """A hostile pod, without a service's proof: the 401 came at once, and then portals
    inflated the gigabyte all the same."""
    before = _cpu_seconds(portals)
    status, head, body = await _send(
        portals,
        "POST /portals HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: gzip",
        bomb,
    )
    spent = _cpu_seconds(portals) - before
    assert spent < 1.0, f"portals spent {spent:.2f} s of CPU on a 1 MiB body"
    _refused_encoding(status, head, body)


def _peak_reset(service: ServiceProcess) -> None:
    """Start the process's peak RSS (VmHWM) afresh from what it holds now."""
    assert service.proc is not None
    with open(f"/proc/{service.proc.pid}/clear_refs", "w") as refs:
        refs.write("5")


def _peak_mib(service: ServiceProcess) -> float:
    assert service.proc is not None
    with open(f"/proc/{service.proc.pid}/status") as status:
        for line in status:
            if line.startswith(("VmHWM:", "VmRSS:")):
                name, value = line.split(":")
                if name == "VmHWM":
                    return int(value.split()[0]) / 1024
    raise AssertionError("no VmHWM")


BATCH = f"/api/v1/portals/{'0' * 8}-0000-4000-8000-{'0' * 12}/invitations/batch?dry_run=true"
# Within the batch's 16 MiB: 2,000,000 rows, 200 times the 10,000 a batch may hold.
TOO_MANY = 2_000_000


@pytest.mark.parametrize(
    ("content_type", "body", "has"),
    [
        ("application/json", b'{"invitations": [' + b"1," * (TOO_MANY - 1) + b"1]}", "2,000,000"),
        # A CSV file is counted up to 100,000 rows: counting 8,000,000 held the loop 6.4 s.
        ("text/csv", b"email\n" + b"a\n" * TOO_MANY, "more than 100,000"),
    ],
    ids=["json", "csv"],
)
async def test_a_batch_of_too_many_rows_is_refused_in_bounded_memory(
    gateway: ServiceProcess, content_type: str, body: bytes, has: str
) -> None:
    """A key's 16 MiB batch of 8,000,000 rows took the gateway to 12.7 GB of memory and
    87 s of CPU (JSON: pydantic built an error for every row before the count was
    checked) or 1.9 GB (CSV: every record kept before it was counted). A quarter of that
    here: 3.3 GB and 0.2 GB before."""
    _peak_reset(gateway)
    before = _peak_mib(gateway)
    status, _, answer = await _send(
        gateway,
        f"POST {BATCH} HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: {content_type}",
        body,
    )
    grown = _peak_mib(gateway) - before
    # The body itself (4 MiB, read whole, then parsed once) and what a parse of it holds.
    assert grown < 128, f"the gateway's peak memory grew {grown:.0f} MiB"
    assert status == 422, answer[:300]
    error = json.loads(answer)["error"]
    assert error["code"] == "too_many_rows"
    assert error["message"] == f"At most 10,000 invitations at once; this has {has}."
