"""The CPU accounting the invite benchmark reports per invitation."""

import os
import time

from bench.cpu import _cpu_seconds, per_unit_ms, snapshot


def test_snapshot_counts_this_process_and_names_the_servers() -> None:
    before = snapshot({"me": os.getpid()})
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = snapshot({"me": os.getpid()})
    assert {"me", "postgres", "rabbitmq", "smtp-sink"} <= set(after)
    assert after["me"] - before["me"] >= 0.03


def test_per_unit_ms_divides_each_part_and_sums_them() -> None:
    costs = per_unit_ms({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 2.25}, 100)
    assert costs == {"a": 5.0, "b": 2.5, "total": 7.5}
    assert per_unit_ms({}, {"a": 1.0}, 0) == {}


def test_a_child_that_ended_still_counts_for_its_parent_when_reaped() -> None:
    """A shared server's processes are counted with their reaped children: a PostgreSQL
    backend that closed between two snapshots took its CPU out of the second."""
    before = _cpu_seconds(os.getpid())
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        deadline = time.process_time() + 0.05
        while time.process_time() < deadline:
            pass
        os._exit(0)
    os.waitpid(child, 0)
    after = _cpu_seconds(os.getpid())
    assert before is not None and after is not None
    _, _, reaped_before = before
    _, _, reaped_after = after
    assert reaped_after - reaped_before >= 0.03  # the child's time, apart from this one's
