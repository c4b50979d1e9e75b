"""The broker socket's writer: frames written close together leave in one send, in
order, and nothing written is lost at close."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from libs.common.amqp_transport import FLUSH_BYTES, FLUSH_SECONDS, CoalescingWriter
from libs.common.bus import Bus
from libs.common.events import UserDisabled, make_event
from tests.support.env import TestEnv


class Received:
    """A local TCP server that keeps every byte it is sent."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            self.data += chunk
        self.closed.set()
        writer.close()

    async def wait_for(self, size: int) -> None:
        while len(self.data) < size:
            await asyncio.sleep(0.005)


@pytest.fixture
async def connected() -> AsyncIterator[tuple[Received, CoalescingWriter, list[bytes]]]:
    received = Received()
    server = await asyncio.start_server(received.on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
    sends: list[bytes] = []
    write: Callable[[Any], None] = transport.write

    def counted(data: Any) -> None:
        sends.append(bytes(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    writer = CoalescingWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
    yield received, writer, sends
    writer.close()
    server.close()
    await server.wait_closed()


async def test_frames_written_close_together_leave_in_one_send_in_order(
    connected: tuple[Received, CoalescingWriter, list[bytes]],
) -> None:
    received, writer, sends = connected
    frames = [f"frame {n};".encode() for n in range(100)]
    for frame in frames:
        writer.write(frame)
    await writer.drain()  # a frame counts as written once it is in the buffer
    await asyncio.sleep(0)
    writer.write(b"a turn later;")
    assert sends == []  # not before the flush interval
    await asyncio.sleep(FLUSH_SECONDS * 5)
    assert sends == [b"".join(frames) + b"a turn later;"]
    writer.write(b"later;")
    await asyncio.sleep(FLUSH_SECONDS * 5)
    assert sends[1:] == [b"later;"]
    expected = b"".join(frames) + b"a turn later;later;"
    await asyncio.wait_for(received.wait_for(len(expected)), 5)
    assert bytes(received.data) == expected


async def test_close_and_a_full_buffer_hand_over_what_is_pending_at_once(
    connected: tuple[Received, CoalescingWriter, list[bytes]],
) -> None:
    received, writer, sends = connected
    big = b"x" * FLUSH_BYTES
    writer.writelines([b"a", big])
    assert sends == [b"a" + big]
    writer.write(b"last")
    writer.close()
    assert sends == [b"a" + big, b"last"]
    await asyncio.wait_for(received.closed.wait(), 5)
    assert bytes(received.data) == b"a" + big + b"last"


async def test_a_bus_publishing_a_batch_under_confirms_makes_few_sends(
    test_env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 confirmed publishes at once: every one arrives, in order, and the socket is
    written a few dozen times (one send per publish before; how few depends on how
    loaded the machine is, so the bound is half the publishes)."""
    flushes = 0
    flush = CoalescingWriter.flush

    def counted(self: CoalescingWriter) -> None:
        nonlocal flushes
        flushes += bool(self._pending)
        flush(self)

    monkeypatch.setattr(CoalescingWriter, "flush", counted)
    bus = Bus(test_env.amqp_url, test_env.bus_prefix, f"coalesce-{uuid.uuid4().hex[:6]}")
    await bus.connect()
    connection = await aio_pika.connect(test_env.amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(bus.exchange_name("events"), routing_key="identity.user.disabled")
    events = [
        make_event("identity.user.disabled", UserDisabled(user_id=uuid.uuid4()), source="t")
        for _ in range(200)
    ]
    before = flushes
    await asyncio.gather(*(bus.publish_envelope(e) for e in events))
    assert flushes - before <= len(events) // 2
    got: list[str] = []
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            got.append(str(message.message_id))
            if len(got) == len(events):
                break
    assert got == [str(e.id) for e in events]
    await connection.close()
    await bus.close()
