"""Pure backoff arithmetic for delivery retries, from a component's :class:`RetryPolicy`.

Follows the Kafka component's ``backOff*`` settings (dapr-pubsub-contract.md §3.3, §5.9):
``constant`` waits ``initial_interval_s`` between attempts; ``exponential`` waits
``initial_interval_s * multiplier ** (n - 1)`` before retry ``n``, capped at ``max_interval_s``.
A ``schedule_s`` list (JetStream's ``backOff``) gives the wait before each retry explicitly, the
last one repeating. No jitter: one consumer retries one record at a time per partition, so there is
no herd to spread, and a deterministic schedule is testable by tables. All values are seconds.

Neighbours: ``resources/kafka.py`` parses the policy; ``engine.py`` is the only caller.
"""

from __future__ import annotations

from ..resources.kafka import RetryPolicy

__all__ = ["FOREVER", "delay_s", "may_retry"]

FOREVER = -1
"""``RetryPolicy.max_retries`` value meaning retry without limit (Dapr's default)."""


def delay_s(policy: RetryPolicy, retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Raises ``ValueError`` if ``retry`` < 1. Never negative; never above ``max_interval_s``
    unless ``initial_interval_s`` itself is larger (then the initial interval is used).
    """
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    if policy.schedule_s:  # JetStream's backOff list: one wait per retry, the last repeats
        return max(policy.schedule_s[min(retry, len(policy.schedule_s)) - 1], 0.0)
    initial = max(policy.initial_interval_s, 0.0)
    if policy.policy == "constant":
        return initial
    cap = max(policy.max_interval_s, initial)
    try:
        value = initial * policy.multiplier ** (retry - 1)
    except OverflowError:  # retry counts grow without bound when retrying forever
        return cap
    return min(max(value, 0.0), cap)


def may_retry(policy: RetryPolicy, retries_done: int) -> bool:
    """Whether another retry is allowed after ``retries_done`` retries (attempts minus one).

    ``max_retries`` of ``-1`` (or any negative value) allows retries forever.
    """
    return policy.max_retries < 0 or retries_done < policy.max_retries
