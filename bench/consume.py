"""``python -m bench.consume``: what consuming one event costs, on the real RabbitMQ and
PostgreSQL without the services: the consumer every service runs (libs/common/bus.py,
its inbox, group commit and acknowledgements) applying a backlog of ``invitation.created``
events into a table with one statement a run (a ``Together`` handler, as identity's
Activity log does). An invitation is consumed three times on its way (identity and the
mailer take ``invitation.created``, invitations takes ``mail.sent``), so this is the
per-message floor under every service's share of ``cpu_ms_per_invitation``.

Prints one JSON line: ``events_per_s`` and ``cpu_ms_per_event`` by part (this process,
PostgreSQL, RabbitMQ), the median of ``--rounds`` rounds by total CPU."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from libs.common.bus import Binding, Bus, Together
from libs.common.db import Conn, create_pool, migrate
from libs.common.events import Event, InvitationCreated, make_event
from tests.support.env import new_test_env, provisioned

from . import cpu

SERVICE = "identity"  # a consuming service's queue name; its user is the consumer


async def _round(env: Any, pool: Any, events: int) -> dict[str, Any]:
    await pool.execute("TRUNCATE effects, inbox")
    applied = asyncio.Event()
    count = 0

    async def apply(conn: Conn, batch: Sequence[Event]) -> None:
        nonlocal count
        await conn.execute(
            "INSERT INTO effects SELECT * FROM unnest($1::uuid[])",
            [data.invitation_id for _, data in batch if isinstance(data, InvitationCreated)],
        )
        count += len(batch)
        if count >= events:
            applied.set()

    owner = Bus(env.amqp_url_as("invitations"), env.bus_prefix, "invitations")
    consumer_bus = Bus(env.amqp_url_as(SERVICE), env.bus_prefix, SERVICE)
    await owner.connect()
    await consumer_bus.connect()
    bindings = [Binding("events", "invitation.created")]
    await consumer_bus.declare_queue(bindings)
    portal = uuid.uuid4()
    for start in range(0, events, 500):
        await asyncio.gather(
            *(
                owner.publish_envelope(
                    make_event(
                        "invitation.created",
                        InvitationCreated(
                            invitation_id=uuid.uuid4(),
                            portal_id=portal,
                            email=f"client-{n}@example.com",
                            expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                        ),
                        source="invitations",
                    )
                )
                for n in range(start, min(events, start + 500))
            )
        )
    parts = {"consumer": os.getpid()}
    before = cpu.snapshot(parts)
    started = time.perf_counter()
    consumer = await consumer_bus.consume(pool, bindings, {"invitation.created": Together(apply)})
    await asyncio.wait_for(applied.wait(), 600)
    seconds = time.perf_counter() - started
    costs = cpu.per_unit_ms(before, cpu.snapshot(parts), events)
    await consumer.stop()
    await consumer_bus.close()
    await owner.close()
    costs.pop("smtp-sink", None)
    costs["total"] = round(sum(v for k, v in costs.items() if k != "total"), 3)
    return {"events_per_s": round(events / seconds), "cpu_ms_per_event": costs}


async def main(events: int, rounds: int) -> None:
    async with provisioned(new_test_env()) as env:
        with tempfile.TemporaryDirectory() as migrations:
            await migrate(env.database_url, "bench_consume", Path(migrations))
        pool = await create_pool(env.database_url, "bench_consume")
        await pool.execute("CREATE TABLE effects (invitation_id uuid NOT NULL)")
        try:
            results = [await _round(env, pool, events) for _ in range(rounds)]
        finally:
            await pool.close()
    results.sort(key=lambda r: r["cpu_ms_per_event"]["total"])
    line = {"bench": "consume", "case": "backlog", "events": events, "rounds": rounds}
    line |= results[len(results) // 2]
    line["all_totals"] = [r["cpu_ms_per_event"]["total"] for r in results]
    sys.stdout.write(orjson.dumps(line).decode() + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop  # as the services run (libs/common/runner.py)

    uvloop.run(main(args.events, args.rounds))
