"""A TCP proxy the test can cut and restore on the same port: a dependency (RabbitMQ)
going away for one service only, without touching the server others share; and a
round-robin HTTP proxy standing in for an ingress in front of gateway replicas."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
from aiohttp import web

from .env import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening (connections are refused) and drop every live connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, upstream_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class RoundRobinProxy:
    """A small HTTP reverse proxy, as an ingress would be: each request goes to the next
    of ``targets`` in turn, from 127.0.0.1, with the client's address appended to
    ``X-Forwarded-For``. ``served`` lists which target answered each request."""

    HOP_BY_HOP = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}
    )

    def __init__(self) -> None:
        # Bound now and held until start: a port only chosen now would be free for an
        # outgoing connection's ephemeral port while the replicas start (a flake).
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.targets: list[str] = []
        self.served: list[str] = []
        self._turn = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, targets: list[str]) -> None:
        self.targets = targets
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0)),
            auto_decompress=False,
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._sock.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        target = self.targets[self._turn % len(self.targets)]
        self._turn += 1
        self.served.append(target)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        forwarded = request.headers.get("X-Forwarded-For")
        peer = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        async with self._session.request(
            request.method,
            target + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            response = web.Response(status=upstream.status, body=await upstream.read())
            for name, value in upstream.headers.items():
                if name.lower() not in self.HOP_BY_HOP:
                    response.headers.add(name, value)
            return response
