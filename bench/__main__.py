"""``python -m bench [invite|accept|portal|list|batch|webperf ...] [--quick]``: start a fresh
stack, run the benchmarks, print one JSON object per result line and save them under
bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from . import accept, batch, invite, listing, portal, webperf
from .stack import Stack, peak_rss_mib, running_stack

Bench = Callable[[Stack, bool], Awaitable[list[dict[str, Any]]]]
BENCHMARKS: dict[str, Bench] = {
    "invite": invite.run,
    "accept": accept.run,
    "portal": portal.run,
    "list": listing.run,
    "batch": batch.run,
    "webperf": webperf.run,
}
RESULTS = Path(__file__).parent / "results"
TARGET_RSS_MIB = 150.0


def emit(result: dict[str, Any], into: list[dict[str, Any]]) -> None:
    into.append(result)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


async def main(names: list[str], quick: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    emit(
        {
            "bench": "meta",
            "case": "run",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "quick": quick,
            "benchmarks": names,
        },
        results,
    )
    async with running_stack() as stack:
        emit(
            {
                "bench": "meta",
                "case": "stack",
                "sink": stack.sink.kind,
                "bus_prefix": stack.env.bus_prefix,
            },
            results,
        )
        for name in names:
            started = time.perf_counter()
            try:
                for result in await BENCHMARKS[name](stack, quick):
                    emit(result, results)
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc(file=sys.stderr)
                emit(
                    {"bench": name, "case": "error", "error": f"{type(exc).__name__}: {exc}"},
                    results,
                )
            emit(
                {
                    "bench": name,
                    "case": "elapsed",
                    "seconds": round(time.perf_counter() - started, 1),
                },
                results,
            )
        for service, pid in stack.pids().items():
            peak = peak_rss_mib(pid)
            emit(
                {
                    "bench": "rss",
                    "case": service,
                    "peak_mib": peak,
                    "target_mib": TARGET_RSS_MIB,
                    "ok": peak is not None and peak < TARGET_RSS_MIB,
                },
                results,
            )
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs for a smoke test")
    parser.add_argument("--out", type=Path, help="where to save the results (JSON array)")
    args = parser.parse_args()
    names = args.benchmarks or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    results = asyncio.run(main(names, args.quick))
    out = args.out or RESULTS / ("quick.json" if args.quick else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    if any(r["case"] == "error" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    cli()
