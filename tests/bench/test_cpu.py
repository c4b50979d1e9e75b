"""The CPU accounting the invite benchmark reports per invitation."""

import os
import time

from bench.cpu import per_unit_ms, snapshot


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
