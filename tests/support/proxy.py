"""A TCP proxy the test can cut and restore on the same port: a dependency (RabbitMQ)
going away for one service only, without touching the server others share; and a
round-robin HTTP proxy standing in for an ingress in front of gateway replicas; and a
black hole: a peer that stops answering without closing anything."""

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
        self._upstream: set[asyncio.StreamWriter] = set()

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
        self._upstream.clear()

    def upstream_ports(self) -> set[int]:
        """The local ports of the live connections to the target: how the target (a
        PostgreSQL server's ``pg_stat_activity.client_port``) tells them apart."""
        return {
            sockname[1]
            for writer in self._upstream
            if (sockname := writer.get_extra_info("sockname")) is not None
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        self._upstream.add(upstream_writer)
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, upstream_writer}
        self._upstream.discard(upstream_writer)


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


class BlackHole:
    """A TCP proxy that can turn into a black hole, as a real network does (a cable
    pulled, a node gone, a NAT table flushed): nothing is closed, nothing is refused, and
    no byte goes through in either direction.

    ``swallow()`` starts the hole: every live connection goes silent for good (its peer
    is gone; only the client's own timeouts, heartbeats or keepalives can tell), and a
    connection opened meanwhile is accepted and never answered. ``restore()`` ends it for
    connections opened from then on. ``tarpit`` makes every new connection silent from
    its first byte (an SMTP server whose greeting never comes); ``stall_after`` makes each
    new connection go silent once the client has sent those bytes (``b"DATA\r\n"``:
    the body never reaches the server, whose answer never comes)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.tarpit = False
        self.stall_after: bytes | None = None
        self.accepted = 0
        self._holed = False
        self._server: asyncio.Server | None = None
        self._live: set[_Link] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._live):
            link.close()

    def swallow(self) -> None:
        self._holed = True
        for link in self._live:
            link.silent = True

    def restore(self) -> None:
        self._holed = False

    @property
    def silent(self) -> int:
        """Connections held open and answered nothing: the ones lost in a hole."""
        return sum(1 for link in self._live if link.silent and not link.client_gone)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, silent=self._holed or self.tarpit, stall_after=self.stall_after)
        self._live.add(link)
        try:
            if link.silent:
                await _drain_into_nothing(reader)
                link.client_gone = True
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            link.upstream = upstream_writer
            await asyncio.gather(
                link.pipe(reader, upstream_writer, outbound=True),
                link.pipe(upstream_reader, writer, outbound=False),
                return_exceptions=True,
            )
        finally:
            link.close()
            self._live.discard(link)


class _Link:
    def __init__(self, client: asyncio.StreamWriter, silent: bool, stall_after: bytes | None):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.silent = silent  # nothing goes through, either way
        self.stalled = False  # the client's bytes go nowhere; the server's still arrive
        self.client_gone = False
        self.stall_after = stall_after
        self._sent = b""

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if outbound and self.stall_after is not None and not self.stalled:
                    self._sent = (self._sent + data)[-4096:]
                    at = self._sent.find(self.stall_after)
                    if at >= 0:
                        # What the client sent up to the marker and with it goes through.
                        after = len(self._sent) - at - len(self.stall_after)
                        data = data[: len(data) - after]
                        self.stalled = True
                        if self.silent or not data:
                            continue
                        writer.write(data)
                        await writer.drain()
                        continue
                if self.silent or (outbound and self.stalled):
                    continue  # dropped: the other side never hears of it
                writer.write(data)
                await writer.drain()
            if outbound and (self.silent or self.stalled):
                # The client gave up; a hole hides that from the server too.
                self.client_gone = True
                return
        except (ConnectionError, OSError):
            pass
        finally:
            if not (self.silent or self.stalled):
                with contextlib.suppress(Exception):
                    writer.close()

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()


async def _drain_into_nothing(reader: asyncio.StreamReader) -> None:
    """Read and drop what a client sends until it gives up and closes."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(65536):
            pass


class SlowReplies:
    """A TCP proxy whose server answers each of the client's commands late: the first
    bytes of the server's answer wait ``delay`` seconds (the greeting too), the rest of
    that answer follows at once. A tarpit that answers every line just inside a per-read
    timeout, as an overloaded relay or an anti-spam delay does. ``delay`` 0: a plain proxy."""

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.delay = delay
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        owed = [True]  # the greeting is an answer too

        async def outbound() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    owed[0] = True
                    upstream_writer.write(data)
                    await upstream_writer.drain()
            with contextlib.suppress(Exception):
                upstream_writer.close()

        async def inbound() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await upstream_reader.read(65536):
                    if owed[0] and self.delay > 0:
                        owed[0] = False
                        await asyncio.sleep(self.delay)
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        await asyncio.gather(outbound(), inbound(), return_exceptions=True)


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
