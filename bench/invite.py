"""Invite pipeline: invitations created by concurrent clients (JSON API, and
``invitation.requested`` events) until every email is in the SMTP sink."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import aio_pika

from libs.common.events import InvitationRequested, make_event

from .ceilings import broker_ceiling, smtp_ceiling
from .cpu import per_unit_ms, snapshot
from .stack import Stack
from .stats import latency_summary, rate, ratio

API_CLIENTS = 32
EVENT_PUBLISHERS = 32
TARGET_API_PER_S = 2000
TARGET_DELIVERED_RATIO = 0.6


async def _wait_delivered(
    stack: Stack, target: int, started: float, stall: float = 30.0, cap: float = 1200.0
) -> tuple[int, float]:
    """Poll the mailer's records (a row turns 'sent' after the sink's 250) until ``target``
    are sent, or nothing moved for ``stall`` seconds (or ``cap`` passed); returns the count
    and the seconds from ``started`` (a perf_counter reading) to the last delivery, taken
    from the rows' own ``sent_at``. Polled every 0.5 s: the count scans the table, and the
    polling is PostgreSQL work the pipeline under test would otherwise get."""
    offset = time.time() - time.perf_counter()  # perf_counter -> wall clock
    count, last = await stack.sent_progress()
    reached = time.perf_counter()
    give_up = reached + cap
    while count < target:
        now = time.perf_counter()
        if now - reached > stall or now > give_up:
            break
        await asyncio.sleep(0.5)
        now_count, last = await stack.sent_progress()
        if now_count != count:
            count, reached = now_count, time.perf_counter()
    until = (last - offset - started) if last is not None else reached - started
    return count, until


def _parts(stack: Stack) -> dict[str, int]:
    # The services, and this process (the clients or publishers, and the polling).
    return {**stack.pids(), "bench": os.getpid()}


async def _integration_key(stack: Stack, run: str) -> dict[str, str]:
    """What a CRM calls the API with: an integration key that may only send invitations."""
    status, made = await stack.api(
        "POST", "/api/v1/keys", {"name": f"bench {run}", "scopes": ["invitations:write"]}
    )
    if status != 201:
        raise RuntimeError(f"could not make an integration key: {status} {made}")
    return {"Authorization": f"Bearer {made['key']}"}


async def _via_api(stack: Stack, portal_id: str, duration: float, run: str) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    seq = 0
    base = await stack.sent_count()
    cpu_before = snapshot(_parts(stack))
    started = time.perf_counter()
    stop = started + duration
    url = f"{stack.public_url}/api/v1/portals/{portal_id}/invitations"
    headers = await _integration_key(stack, run)

    async def client() -> None:
        nonlocal seq
        while time.perf_counter() < stop:
            seq += 1
            body = {"email": f"api-{run}-{seq}@example.com"}
            t0 = time.perf_counter()
            async with stack.http.post(url, json=body, headers=headers) as response:
                await response.read()
                if response.status == 201:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[str(response.status)] = errors.get(str(response.status), 0) + 1

    await asyncio.gather(*(client() for _ in range(API_CLIENTS)))
    api_elapsed = time.perf_counter() - started
    accepted = len(latencies)
    sent, until = await _wait_delivered(stack, base + accepted, started)
    cpu = per_unit_ms(cpu_before, snapshot(_parts(stack)), sent - base)
    delivered = sent - base
    return {
        "clients": API_CLIENTS,
        "auth": "integration_key",
        "duration_s": round(api_elapsed, 2),
        "accepted": accepted,
        "api_accepted_per_s": rate(accepted, api_elapsed),
        **{f"api_{k}": v for k, v in latency_summary(latencies, 50, 99).items()},
        "errors": errors,
        "delivered": delivered,
        "delivered_per_s": rate(delivered, until),
        "lost": accepted - delivered,
        # From the first request to the last delivery, all parts of the machine.
        "cpu_ms_per_invitation": cpu,
    }


async def _via_events(stack: Stack, portal_id: str, duration: float, run: str) -> dict[str, Any]:
    base = await stack.sent_count()
    cpu_before = snapshot(_parts(stack))
    connection = await aio_pika.connect(stack.env.integration_url)  # as an integration would
    published = 0
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{stack.env.bus_prefix}.events")
        started = time.perf_counter()
        stop = started + duration

        async def publisher() -> None:
            nonlocal published
            while time.perf_counter() < stop:
                published += 1
                key = f"evt-{run}-{published}"
                envelope = make_event(
                    "invitation.requested",
                    InvitationRequested(
                        portal_id=uuid.UUID(portal_id),
                        email=f"{key}@example.com",
                        idempotency_key=key,
                    ),
                    source="bench",
                    correlation_id=key,
                )
                message = aio_pika.Message(
                    envelope.to_json(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=str(envelope.id),
                    correlation_id=envelope.correlation_id,
                    type=envelope.type,
                )
                await exchange.publish(message, routing_key=envelope.type, timeout=10)

        await asyncio.gather(*(publisher() for _ in range(EVENT_PUBLISHERS)))
        publish_elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    sent, until = await _wait_delivered(stack, base + published, started)
    cpu = per_unit_ms(cpu_before, snapshot(_parts(stack)), sent - base)
    created = await stack.pool.fetchval(
        "SELECT count(*) FROM invitations.invitations WHERE idempotency_key LIKE $1", f"evt-{run}-%"
    )
    delivered = sent - base
    return {
        "publishers": EVENT_PUBLISHERS,
        "duration_s": round(publish_elapsed, 2),
        "published": published,
        "published_per_s": rate(published, publish_elapsed),
        "created": created,
        "delivered": delivered,
        "delivered_per_s": rate(delivered, until),
        "lost": published - delivered,
        # From the first publish to the last delivery, all parts of the machine.
        "cpu_ms_per_invitation": cpu,
    }


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    duration = 3.0 if quick else 20.0
    run_id = uuid.uuid4().hex[:6]
    portal = await stack.create_portal(f"Invite bench {run_id}")
    base = await stack.sent_count()
    await stack.invite(portal["id"], f"warmup-{run_id}@example.com")
    await _wait_delivered(stack, base + 1, time.perf_counter())
    message = stack.sink.any_message()

    api = await _via_api(stack, portal["id"], duration, run_id)
    events = await _via_events(stack, portal["id"], duration, run_id)
    broker = await broker_ceiling(stack.env.amqp_url, stack.env.bus_prefix, duration)
    results = []
    smtp: dict[str, Any] = {}
    if message is not None:
        smtp = await smtp_ceiling(stack.sink.port, message, duration)
        results.append({"bench": "invite", "case": "ceiling_smtp", "sink": stack.sink.kind, **smtp})
    results.append({"bench": "invite", "case": "ceiling_broker", **broker})
    smtp_rate = float(smtp.get("emails_per_s", 0.0))
    for case, data in (("api", api), ("events", events)):
        results.append(
            {
                "bench": "invite",
                "case": case,
                **data,
                "smtp_ceiling_per_s": smtp_rate,
                "delivered_ratio": ratio(data["delivered_per_s"], smtp_rate),
                "target_delivered_ratio": TARGET_DELIVERED_RATIO,
            }
        )
    results[-2]["broker_ceiling_per_s"] = broker["msg_per_s"]
    results[-2]["api_ratio_to_broker"] = ratio(api["api_accepted_per_s"], broker["msg_per_s"])
    results[-2]["target_api_per_s"] = TARGET_API_PER_S
    results[-1]["broker_ceiling_per_s"] = broker["msg_per_s"]
    results[-1]["publish_ratio_to_broker"] = ratio(events["published_per_s"], broker["msg_per_s"])
    return results
