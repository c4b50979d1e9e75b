"""``python -m bench.logs``: what one log line costs, in-process (no stack): the services'
structlog pipeline (context, service, level, time, redaction, JSON) written to /dev/null,
for the two lines every invitation writes several times: an access line and an event's
line, each with the request's context bound. One JSON object per line."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable

import orjson
import structlog

from libs.common.logging import configure_logging, get_logger


def per_line_us(
    work: Callable[[], object], rounds: int = 9, seconds: float = 0.4
) -> dict[str, float]:
    """CPU time of one line in microseconds over ``rounds`` rounds: the best round (this
    VM's neighbours only ever add to it) and the median."""
    each = []
    for _ in range(rounds):
        lines, started = 0, time.process_time()
        while time.process_time() - started < seconds:
            for _ in range(100):
                work()
            lines += 100
        each.append((time.process_time() - started) / lines * 1e6)
    each.sort()
    return {"us_per_line": round(each[0], 2), "median_us": round(each[len(each) // 2], 2)}


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    # The services log to their stdout; here it is /dev/null, so only the pipeline counts.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    configure_logging("bench")
    log = get_logger("bench.logs")
    structlog.contextvars.bind_contextvars(
        request_id=uuid.uuid4().hex, correlation_id=str(uuid.uuid4())
    )
    invitation_id, portal_id = str(uuid.uuid4()), str(uuid.uuid4())
    cases = {
        "access_line": lambda: log.info(
            "http_request",
            method="POST",
            route="/portals/{portal_id}/invitations",
            status=201,
            duration_ms=3.21,
        ),
        "event_line": lambda: log.info(
            "invitation_created", invitation_id=invitation_id, portal_id=portal_id
        ),
        "filtered_debug_line": lambda: log.debug("http_request", route="/healthz"),
    }
    for case, work in cases.items():
        line = {"bench": "logs", "case": case, **per_line_us(work)}
        out.write(orjson.dumps(line).decode() + "\n")
    out.flush()


if __name__ == "__main__":
    main()
