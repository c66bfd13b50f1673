"""Table tests of the per-partition commit tracker; no broker involved (pure logic)."""

from __future__ import annotations

import pytest

from tidings.sidecar.brokers.kafka.offsets import PartitionOffsets

# (handed out, finished in this order, expected committable after each finish)
CASES = [
    pytest.param([0, 1, 2], [0, 1, 2], [1, 2, 3], id="in-order"),
    pytest.param([0, 1, 2], [1, 2, 0], [None, None, 3], id="head-last"),
    pytest.param([0, 1, 2, 3], [0, 2, 1, 3], [1, 1, 3, 4], id="hole-filled"),
    # gaps left by compaction/transaction markers: never wait for offset + 1
    pytest.param([5, 9, 10, 20], [5, 9, 10, 20], [6, 10, 11, 21], id="gaps"),
    pytest.param([5, 9, 20], [9, 20, 5], [None, None, 21], id="gaps-out-of-order"),
    pytest.param([100], [100], [101], id="single"),
]


@pytest.mark.parametrize(("handed", "finish", "expected"), CASES)
def test_committable(handed: list[int], finish: list[int], expected: list[int | None]) -> None:
    t = PartitionOffsets()
    for o in handed:
        t.handed_out(o)
    got = []
    for o in finish:
        t.finished(o)
        got.append(t.committable())
    assert got == expected
    assert t.in_flight == 0


def test_unfinished_record_blocks_commit_past_it() -> None:
    t = PartitionOffsets()
    for o in (0, 1, 2, 3):
        t.handed_out(o)
    t.finished(0)
    t.finished(2)
    t.finished(3)
    assert t.committable() == 1  # record 1 never finished: commit stops before it
    assert t.in_flight == 3


def test_nothing_finished() -> None:
    t = PartitionOffsets()
    assert t.committable() is None and t.to_commit() is None
    t.handed_out(7)
    assert t.committable() is None and t.to_commit() is None


@pytest.mark.parametrize(
    ("committed", "finish_upto", "expected_to_commit"),
    [
        pytest.param(None, None, None, id="nothing"),
        pytest.param(None, 0, 1, id="first"),
        pytest.param(3, None, None, id="known-commit-no-progress"),
        pytest.param(3, 3, 4, id="progress-past-commit"),
    ],
)
def test_to_commit(
    committed: int | None, finish_upto: int | None, expected_to_commit: int | None
) -> None:
    t = PartitionOffsets(committed)
    start = committed or 0
    for o in range(start, start + 3):
        t.handed_out(o)
    if finish_upto is not None:
        for o in range(start, finish_upto + 1):
            t.finished(o)
    assert t.to_commit() == expected_to_commit


def test_committed_suppresses_repeat_commit() -> None:
    t = PartitionOffsets()
    t.handed_out(0)
    t.handed_out(1)
    t.finished(0)
    assert t.to_commit() == 1
    t.committed(1)
    assert t.to_commit() is None
    t.finished(1)
    assert t.to_commit() == 2
    t.committed(1)  # a late, lower commit confirmation never moves the mark back
    t.committed(2)
    assert t.to_commit() is None


@pytest.mark.parametrize(
    ("handed", "bad"),
    [
        pytest.param([0, 1], 5, id="never-handed-out"),
        pytest.param([0, 1], 1, id="finished-twice"),
    ],
)
def test_finished_rejects_unknown_offsets(handed: list[int], bad: int) -> None:
    t = PartitionOffsets()
    for o in handed:
        t.handed_out(o)
    if bad in handed:
        t.finished(bad)
    with pytest.raises(ValueError):
        t.finished(bad)


@pytest.mark.parametrize("second", [3, 2])
def test_handed_out_must_increase(second: int) -> None:
    t = PartitionOffsets()
    t.handed_out(3)
    with pytest.raises(ValueError):
        t.handed_out(second)


def test_handed_out_many_is_a_batch_of_handed_out() -> None:
    t = PartitionOffsets()
    t.handed_out_many([])
    t.handed_out_many([3, 4, 9])
    t.handed_out(10)
    for o in (3, 4, 9, 10):
        t.finished(o)
    assert t.committable() == 11
    with pytest.raises(ValueError):
        t.handed_out_many([10, 11])
