"""Requests written as bytes: what aiohttp's client would re-encode or drop (a header byte
that isn't UTF-8), sent as a hostile client would."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import BaseTestServer


async def raw_request(
    server: BaseTestServer, head: bytes, body: bytes = b""
) -> tuple[int, bytes, bytes]:
    """One request with its header lines sent as these bytes (aiohttp's client re-encodes
    or drops a byte that isn't UTF-8): ``head`` is the request line and headers, without
    the blank line. Answers the status, the response's header block and its body."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    writer.write(head + b"\r\nHost: gw\r\nConnection: close\r\n" + length + b"\r\n" + body)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    headers, _, content = answer.partition(b"\r\n\r\n")
    return int(headers.split()[1]), headers, content
