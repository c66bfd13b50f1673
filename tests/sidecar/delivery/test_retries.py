"""Table tests of the pure backoff arithmetic (``sidecar/delivery/retries.py``)."""

from __future__ import annotations

import pytest

from tidings.sidecar.delivery.retries import FOREVER, delay_s, may_retry
from tidings.sidecar.resources.kafka import RetryPolicy

EXP = RetryPolicy("exponential", initial_interval_s=0.5, max_interval_s=60.0, multiplier=1.5)
DOUBLING = RetryPolicy("exponential", initial_interval_s=1.0, max_interval_s=10.0, multiplier=2.0)
CONSTANT = RetryPolicy("constant", initial_interval_s=5.0, max_interval_s=5.0, multiplier=1.0)


@pytest.mark.parametrize(
    ("policy", "retry", "expected"),
    [
        (EXP, 1, 0.5),
        (EXP, 2, 0.75),
        (EXP, 3, 1.125),
        (DOUBLING, 1, 1.0),
        (DOUBLING, 2, 2.0),
        (DOUBLING, 4, 8.0),
        (DOUBLING, 5, 10.0),  # capped at max_interval_s
        (DOUBLING, 50, 10.0),
        (DOUBLING, 10**6, 10.0),  # retrying forever never overflows
        (CONSTANT, 1, 5.0),
        (CONSTANT, 1000, 5.0),
        # an initial interval above the cap is used as is (the cap never shortens the first wait)
        (RetryPolicy("exponential", 3.0, 1.0, 2.0), 1, 3.0),
        (RetryPolicy("exponential", 3.0, 1.0, 2.0), 3, 3.0),
        (RetryPolicy("exponential", 0.0, 1.0, 2.0), 7, 0.0),
    ],
)
def test_delay_s(policy: RetryPolicy, retry: int, expected: float) -> None:
    assert delay_s(policy, retry) == pytest.approx(expected)


def test_delay_s_refuses_retry_zero() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        delay_s(EXP, 0)


@pytest.mark.parametrize(
    ("max_retries", "retries_done", "expected"),
    [
        (FOREVER, 0, True),
        (FOREVER, 10**9, True),
        (-5, 3, True),
        (0, 0, False),
        (1, 0, True),
        (1, 1, False),
        (3, 2, True),
        (3, 3, False),
    ],
)
def test_may_retry(max_retries: int, retries_done: int, expected: bool) -> None:
    policy = RetryPolicy(max_retries=max_retries)
    assert may_retry(policy, retries_done) is expected


def test_default_policy_retries_forever() -> None:
    """The component default (Dapr's backOffMaxRetries -1): nothing is ever given up."""
    assert RetryPolicy().max_retries == FOREVER
    assert may_retry(RetryPolicy(), 123456)
