"""The broker connection's socket: what is written within a millisecond leaves in one send.

aiormq writes every frame the moment it has it, and a publish holds its channel until
its frame has been written: each publish, each ack, was a ``send`` of its own, and
RabbitMQ woke for each. py-spy put those writes at a sixth of the invitations service's
CPU while a 10,000-row batch was accepted. Here what is written within one millisecond
(``FLUSH_SECONDS``) leaves in one ``send``, in the order it was written; at 256 KiB it
leaves at once. A frame counts as written (``drain``) once it is in this buffer, as it
would be in the transport's: it goes out unless the connection is lost, and then the
transport's frames are lost with it too. The cost: a connection's handshake, a dozen
round trips, takes about 10 ms longer (measured 5 → 14 ms with its channel).

aiormq takes a transport factory for this (``transport_factory``); the reader, the
protocol and the writer are built as ``asyncio.open_connection`` builds them, with the
writer below in place of the stdlib's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiormq.connection import SSLContextProvider, TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

# How long a written frame may wait for others to share its send, and how much may wait.
FLUSH_SECONDS = 0.001
FLUSH_BYTES = 256 * 1024


class CoalescingWriter(asyncio.StreamWriter):
    """A stream writer that hands the transport what was written during one
    ``FLUSH_SECONDS`` as one buffer. ``close`` and ``write_eof`` hand over what is pending
    first, so nothing written before them is lost or reordered."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._event_loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self._event_loop.call_later(FLUSH_SECONDS, self.flush)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Hand what is pending to the transport now (one ``write``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending, self._size = self._pending, [], 0
        if self.transport.is_closing():
            return  # the connection is gone: the transport would drop it (and warn)
        super().write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class CoalescingTransportFactory(TransportFactory):
    """aiormq's TCP and TLS factories (by the URL's scheme), with a ``CoalescingWriter``."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider: SSLContextProvider | None = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        # aiormq has filled in the scheme's default port; a URL without a host is refused
        # by aio_pika before it gets here.
        assert url.host is not None and url.port is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host, port=url.port, ssl=ssl, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CoalescingWriter(transport, protocol, reader, loop)
