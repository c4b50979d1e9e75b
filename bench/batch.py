"""Bulk invitations (issue 16): one 10,000-row batch through the public API, timed from the
request to the answer (every row durable) and on to the last email in the sink, with the
CPU every part of the machine spent on it, per invitation."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from . import cpu
from .invite import _wait_delivered
from .stack import Stack

ROWS = 10_000
QUICK_ROWS = 1_000
TARGET_ACCEPTED_SECONDS = 2.0


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    rows = QUICK_ROWS if quick else ROWS
    run_id = uuid.uuid4().hex[:6]
    portal = await stack.create_portal(f"Batch bench {run_id}")
    # Once the warm-up email is out, the invitations replica knows the portal and the
    # pipeline is idle.
    base = await stack.sent_count()
    await stack.invite(portal["id"], f"warmup-{run_id}@example.com")
    await _wait_delivered(stack, base + 1, time.perf_counter())
    base = await stack.sent_count()
    body = {
        "invitations": [
            {"email": f"batch-{run_id}-{n}@example.com", "name": f"Client {n}"} for n in range(rows)
        ]
    }
    parts = {**stack.pids(), "bench": os.getpid()}
    before = cpu.snapshot(parts)
    started = time.perf_counter()
    status, answer = await stack.api(
        "POST", f"/api/v1/portals/{portal['id']}/invitations/batch", body
    )
    accepted = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"batch: {status} {str(answer)[:300]}")
    outcomes: dict[str, int] = {}
    for result in answer["results"]:
        outcomes[result["status"]] = outcomes.get(result["status"], 0) + 1
    after_answer = cpu.snapshot(parts)
    delivered, until_last = await _wait_delivered(stack, base + outcomes.get("created", 0), started)
    after = cpu.snapshot(parts)
    return [
        {
            "bench": "batch",
            "case": "api_batch",
            "rows": rows,
            "outcomes": outcomes,
            "accepted_seconds": round(accepted, 3),
            "target_accepted_seconds": TARGET_ACCEPTED_SECONDS,
            "accepted_rows_per_s": round(rows / accepted, 1),
            "delivered": delivered - base,
            "seconds_to_last_email": round(until_last, 2),
            "delivered_per_s": round((delivered - base) / until_last, 1) if until_last else None,
            # CPU until the answer (the batch made durable), and until the last email.
            "cpu_ms_per_row_accepted": cpu.per_unit_ms(before, after_answer, rows),
            "cpu_ms_per_invitation": cpu.per_unit_ms(before, after, rows),
        }
    ]
