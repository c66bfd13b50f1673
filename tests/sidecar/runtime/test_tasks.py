"""tasks.py: stopping background tasks in bounded time, also when one ignores cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tidings.sidecar.runtime.tasks import stop_tasks


async def test_cancels_and_waits_for_tasks_that_end() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(60), name=f"t{i}") for i in range(3)]
    assert await stop_tasks(tasks, what="sleepers") == set()
    assert all(t.cancelled() for t in tasks)


async def test_a_task_that_swallows_its_cancellation_is_named_and_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue  # a library bug: the cancellation is lost

    task = asyncio.create_task(stubborn(), name="stubborn-loop")
    await asyncio.sleep(0)
    stuck = await stop_tasks([task], what="test loops", wait_s=0.2)
    assert stuck == {task}
    assert "test loops: 1 task(s) did not stop" in caplog.text
    assert "stubborn-loop" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task})


async def test_an_exception_a_task_ended_with_is_read(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    caplog.set_level(logging.DEBUG, logger="tidings.sidecar.runtime.tasks")
    assert await stop_tasks([task], what="failing") == set()
    assert "boom" in caplog.text
