"""Stopping background tasks in bounded time.

Every task the sidecar starts must be stoppable within a known time, or a pod may not stop on
SIGTERM (Kubernetes then SIGKILLs it after ``terminationGracePeriodSeconds`` and whatever was in
flight is delivered again). Cancelling is not enough on its own: a library may swallow a
``CancelledError`` (redis-py's pipeline did, at a connection reset) and the task then goes on
running. :func:`stop_tasks` therefore cancels, waits up to a deadline and names in a log line
every task that did not stop, instead of waiting for it for ever. Loops should also test a
closing flag, so a swallowed cancellation still ends them at their next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["STOP_WAIT_S", "stop_tasks"]

STOP_WAIT_S = 2.0
"""Seconds a cancelled task gets to end before it is reported and left behind."""


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any]],
    *,
    what: str,
    wait_s: float = STOP_WAIT_S,
    extra: Mapping[str, Any] | None = None,
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait at most ``wait_s`` seconds for them to end.

    Returns the tasks still running after the deadline (each is logged at ERROR with ``what``,
    e.g. ``"redis readers"``, and its name); an exception a task ended with is read so asyncio
    does not report it as never retrieved. Never raises, and is not itself delayed by a task
    that ignores its cancellation. ``extra`` is added to the log line (``app_id``, ...).
    """
    tasks = set(tasks)
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=max(wait_s, 0.0))
    else:
        stuck = set()
    for task in tasks - stuck:
        if not task.cancelled() and task.exception() is not None:
            log.debug(
                "%s: task %s ended with %r",
                what,
                task.get_name(),
                task.exception(),
                extra=dict(extra or {}),
            )
    if stuck:
        log.error(
            "%s: %d task(s) did not stop within %.1f s of being cancelled: %s; left behind",
            what,
            len(stuck),
            wait_s,
            ", ".join(sorted(t.get_name() for t in stuck)),
            extra=dict(extra or {}),
        )
    return stuck
