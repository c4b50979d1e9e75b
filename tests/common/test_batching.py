"""Group commit (libs/common/batching): callers that arrive while a write runs go
together in the next one, each gets its own answer, and a failed write fails only its
own batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from libs.common.batching import GroupCommit
from libs.common.context import set_deadline, time_left


class Recorder:
    def __init__(self, fail_when: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_when = fail_when
        self.release = asyncio.Event()
        self.release.set()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_when in items:
            raise ConnectionError("database away")
        return [item * 10 for item in items]


async def test_one_caller_alone_writes_at_once() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    assert await group(1) == 10
    assert await group(2) == 20
    assert recorder.batches == [[1], [2]]


async def test_callers_arriving_during_a_write_go_together_in_the_next() -> None:
    recorder = Recorder()
    recorder.release.clear()
    group = GroupCommit(recorder.write, max_batch=4)
    first = asyncio.create_task(group(0))
    await asyncio.sleep(0)  # the first write is under way, held
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group(n)) for n in range(1, 7)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50, 60]
    # In order, never more than max_batch at once.
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6]]


async def test_a_failed_write_fails_its_own_batch_only() -> None:
    recorder = Recorder(fail_when=2)
    recorder.release.clear()
    group = GroupCommit(recorder.write, max_batch=2)
    calls = [asyncio.create_task(group(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    recorder.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert recorder.batches == [[1, 2], [3, 4], [5]]
    assert [type(o).__name__ for o in outcomes[:2]] == ["ConnectionError"] * 2
    assert outcomes[2:] == [30, 40, 50]
    # And the group goes on writing after a failure.
    assert await group(7) == 70


async def test_a_failure_that_may_be_one_items_is_redone_item_by_item() -> None:
    recorder = Recorder(fail_when=2)
    recorder.release.clear()
    group = GroupCommit(
        recorder.write, max_batch=4, redo_alone_if=lambda exc: isinstance(exc, ConnectionError)
    )
    calls = [asyncio.create_task(group(n)) for n in range(1, 5)]
    await asyncio.sleep(0)
    recorder.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert recorder.batches == [[1, 2, 3, 4], [1], [2], [3], [4]]
    assert isinstance(outcomes[1], ConnectionError)
    assert [outcomes[0], *outcomes[2:]] == [10, 30, 40]


async def test_a_failure_the_predicate_refuses_still_fails_the_whole_batch() -> None:
    recorder = Recorder(fail_when=2)
    recorder.release.clear()
    group = GroupCommit(recorder.write, max_batch=4, redo_alone_if=lambda exc: False)
    calls = [asyncio.create_task(group(n)) for n in range(1, 4)]
    await asyncio.sleep(0)
    recorder.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert recorder.batches == [[1, 2, 3]]
    assert all(isinstance(o, ConnectionError) for o in outcomes)


async def test_a_write_must_answer_every_item() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return [0]

    group = GroupCommit(short)
    results = await asyncio.gather(group(1), group(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    recorder = Recorder()
    recorder.release.clear()
    group = GroupCommit(recorder.write)
    impatient = asyncio.create_task(group(1))
    patient = asyncio.create_task(group(2))
    await asyncio.sleep(0)
    impatient.cancel()
    recorder.release.set()
    assert await patient == 20
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert recorder.batches == [[1, 2]]


def test_a_batch_holds_at_least_one() -> None:
    with pytest.raises(ValueError):
        GroupCommit(Recorder().write, max_batch=0)


async def test_the_writer_runs_on_no_callers_deadline() -> None:
    """The first caller's request has a deadline (a caller's X-Request-Timeout); the
    writer it starts serves later callers too, so it must not inherit it."""
    seen: list[float | None] = []

    async def write(items: Sequence[int]) -> list[int]:
        seen.append(time_left())
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write)
    set_deadline("5")
    try:
        assert await group(1) == 1
    finally:
        set_deadline(None)
    assert seen == [None]
