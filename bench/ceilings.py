"""The raw ceilings each benchmark is compared with, measured in the same run."""

from __future__ import annotations

import asyncio
import time
import uuid
from email.message import EmailMessage
from typing import Any

import aio_pika
import aiosmtplib

from .stats import ms, percentile, rate


async def broker_ceiling(
    amqp_url: str, prefix: str, duration: float, publishers: int = 32
) -> dict[str, Any]:
    """Persistent messages published with confirms by concurrent publishers into a durable
    quorum queue (like the services' queues) and consumed with acks on another connection:
    end-to-end msg/s."""
    body = b"x" * 600  # about the size of an invitation.requested envelope
    exchange_name = queue_name = f"{prefix}.bench-ceiling"
    pub_conn = await aio_pika.connect(amqp_url)
    sub_conn = await aio_pika.connect(amqp_url)
    try:
        pub = await pub_conn.channel(publisher_confirms=True)
        exchange = await pub.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        sub = await sub_conn.channel()
        await sub.set_qos(prefetch_count=32)
        queue = await sub.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange_name, routing_key="#")
        consumed = 0
        last = time.perf_counter()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal consumed, last
            await message.ack()
            consumed += 1
            last = time.perf_counter()

        await queue.consume(on_message)
        published = 0
        started = time.perf_counter()
        stop = started + duration

        async def publisher() -> None:
            nonlocal published
            while time.perf_counter() < stop:
                message = aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=str(uuid.uuid4()),
                )
                await exchange.publish(message, routing_key="bench.ceiling", timeout=10)
                published += 1

        await asyncio.gather(*(publisher() for _ in range(publishers)))
        publish_elapsed = time.perf_counter() - started
        deadline = time.perf_counter() + 60
        while consumed < published and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return {
            "published": published,
            "consumed": consumed,
            "publish_per_s": rate(published, publish_elapsed),
            "msg_per_s": rate(consumed, last - started),
        }
    finally:
        await sub_conn.close()
        await pub_conn.close()


async def smtp_ceiling(
    port: int, message: EmailMessage, duration: float, connections: int = 16
) -> dict[str, Any]:
    """aiosmtplib with reused connections sending the same email into the same sink."""
    sent = 0
    started = time.perf_counter()
    stop = started + duration

    async def worker(n: int) -> None:
        nonlocal sent
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        try:
            while time.perf_counter() < stop:
                await client.send_message(message, recipients=[f"ceiling-{n}-{sent}@example.com"])
                sent += 1
        finally:
            await client.quit()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "sent": sent,
        "emails_per_s": rate(sent, elapsed),
        "connections": connections,
        "message_bytes": len(message.as_bytes()),
    }


def argon2_ceiling(samples: int = 10) -> dict[str, Any]:
    """One argon2id hash with the identity service's own hasher (same parameters)."""
    from services.identity.passwords import default_hasher

    hasher = default_hasher()
    hasher.hash("warm-up-password-123")
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        hasher.hash("a-long-client-password-7")
        times.append(time.perf_counter() - t0)
    return {
        "hash_p50_ms": ms(percentile(times, 50)),
        "time_cost": hasher.time_cost,
        "memory_cost_kib": hasher.memory_cost,
        "parallelism": hasher.parallelism,
    }
