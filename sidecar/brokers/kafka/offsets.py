"""Which offset of one partition may be committed: the at-least-once bookkeeping, pure.

A consumer hands records of a partition to its worker in fetch order and marks each one
*finished* when the handler returned (``brokers/base.py``: acked or dead-lettered). The offset
to commit is ``offset + 1`` of the highest finished record with no unfinished record before it
(Kafka commits the *next* offset to read; aiokafka-pitfalls.md 1).

Offsets are not consecutive: compaction, transaction markers and aborted batches leave gaps the
fetcher steps over silently, so "contiguous" means contiguous among the records actually handed
out, never ``offset + 1`` arithmetic (aiokafka-pitfalls.md 2; faust's gap bugs). Used by
``brokers/kafka/consuming.py``; one tracker per partition per assignment.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Offsets of one partition handed out, finished and committed.

    ``committed`` is the offset last committed for the partition, if known (the next offset to
    read, Kafka's meaning); it only serves :meth:`to_commit` to skip commits that would not
    advance anything.
    """

    __slots__ = ("_committable", "_committed", "_done", "_last_handed_out", "_pending")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: deque[int] = deque()  # handed out, not yet contiguous-finished, in order
        self._done: set[int] = set()  # finished out of order, waiting for an earlier offset
        self._last_handed_out: int | None = None
        self._committable: int | None = committed
        self._committed: int | None = committed

    def handed_out(self, offset: int) -> None:
        """Record that ``offset`` was given to the worker. Offsets must strictly increase.

        Raises ``ValueError`` for an offset not above the last one handed out.
        """
        if self._last_handed_out is not None and offset <= self._last_handed_out:
            raise ValueError(f"offset {offset} handed out after {self._last_handed_out}")
        self._last_handed_out = offset
        self._pending.append(offset)

    def handed_out_many(self, offsets: list[int]) -> None:
        """:meth:`handed_out` for a fetched batch, whose offsets increase (aiokafka returns them
        in log order). Raises ``ValueError`` if the first is not above the last handed out."""
        if not offsets:
            return
        first = offsets[0]
        if self._last_handed_out is not None and first <= self._last_handed_out:
            raise ValueError(f"offset {first} handed out after {self._last_handed_out}")
        self._last_handed_out = offsets[-1]
        self._pending.extend(offsets)

    def finished(self, offset: int) -> None:
        """Mark ``offset`` finished (its handler returned).

        Raises ``ValueError`` if ``offset`` is not handed out or already finished.
        """
        pending = self._pending
        if pending and pending[0] == offset:  # the in-order case: O(1)
            pending.popleft()
            self._committable = offset + 1
            done = self._done
            while pending and done and pending[0] in done:
                head = pending.popleft()
                done.discard(head)
                self._committable = head + 1
            return
        if offset in self._done or offset not in pending:
            raise ValueError(f"offset {offset} is not in flight")
        self._done.add(offset)

    def committable(self) -> int | None:
        """``offset + 1`` of the highest finished record with nothing unfinished before it;
        the last committed offset if nothing finished since; ``None`` if neither is known."""
        return self._committable

    def to_commit(self) -> int | None:
        """:meth:`committable` if it is ahead of the last committed offset, else ``None``."""
        c = self._committable
        if c is None or (self._committed is not None and c <= self._committed):
            return None
        return c

    def committed(self, offset: int) -> None:
        """Note that ``offset`` (the next offset to read) was committed."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    @property
    def in_flight(self) -> int:
        """How many handed-out records are not yet covered by :meth:`committable`."""
        return len(self._pending)

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets(committable={self._committable}, committed={self._committed}, "
            f"in_flight={len(self._pending)})"
        )
