"""Backoff follows the policy: base 1 s, factor 2, cap 5 min, jitter within bounds."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from jobcontrol.retry import DEFAULT_RETRY_POLICY, RetryPolicy


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (8, 128), (9, 256), (10, 300), (500, 300), (5000, 300)],
)
def test_nominal_delay_doubles_from_one_second_up_to_five_minutes(attempt: int, seconds: float):
    assert DEFAULT_RETRY_POLICY.nominal_delay(attempt) == timedelta(seconds=seconds)


def test_jittered_delay_stays_in_the_upper_half_of_the_nominal_delay():
    rng = random.Random(7)
    for attempt in range(1, 15):
        nominal = DEFAULT_RETRY_POLICY.nominal_delay(attempt)
        draws = [DEFAULT_RETRY_POLICY.delay(attempt, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in draws)
        assert len(set(draws)) > 100  # jitter actually spreads retries


def test_attempt_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy().nominal_delay(0)
