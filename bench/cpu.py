"""CPU time by part of the system, from /proc: what one unit of work costs each process
(the services by pid; PostgreSQL, RabbitMQ and the SMTP sink by command name)."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# Shared servers, found by the command name in /proc/<pid>/stat.
SERVERS = {"postgres": "postgres", "rabbitmq": "beam.smp", "smtp-sink": "smtp-sink"}


def _cpu_seconds(pid: int) -> tuple[str, float, float] | None:
    """The process's command name, its CPU seconds so far, and those of its children
    that ended and were waited for (a PostgreSQL backend that closed: the postmaster
    reaps it)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # utime, stime, cutime and cstime are fields 14 to 17 of stat; fields[0] here is
    # field 3.
    own = (int(fields[11]) + int(fields[12])) / TICK
    return name, own, (int(fields[13]) + int(fields[14])) / TICK


def snapshot(service_pids: dict[str, int]) -> dict[str, float]:
    """Seconds of CPU used so far by each service and each shared server: all its
    processes, and the ones that ended (the postmaster's reaped backends). Before, a
    backend that closed between two snapshots took its CPU out of the second: a 10,000-row
    batch was once measured at -0.33 ms of PostgreSQL a row."""
    totals = dict.fromkeys([*service_pids, *SERVERS], 0.0)
    by_pid = {pid: name for name, pid in service_pids.items()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        found = _cpu_seconds(pid)
        if found is None:
            continue
        command, seconds, reaped = found
        if pid in by_pid:
            totals[by_pid[pid]] += seconds
            continue
        for part, name in SERVERS.items():
            if command == name:
                totals[part] += seconds + reaped
    return totals


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per unit of work, by part, and their sum as ``total``."""
    if units <= 0:
        return {}
    costs = {k: round(1000 * (after[k] - before.get(k, 0.0)) / units, 2) for k in after}
    costs["total"] = round(sum(costs.values()), 2)
    return costs
