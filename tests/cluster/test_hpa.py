"""The HPA rule the autoscaling test sizes its idle check by (no node needed)."""

from __future__ import annotations

import pytest

from tests.cluster.hpa import desired_replicas, idle_limit


def test_idle_replicas_above_the_limit_keep_the_hpa_up() -> None:
    """Two idle replicas at 44% of a 50% target stay two: the HPA never scales back down."""
    assert desired_replicas(2, 44, 50) == 2


def test_within_the_tolerance_nothing_changes() -> None:
    assert desired_replicas(3, 52, 50) == 3
    assert desired_replicas(3, 46, 50) == 3


def test_load_scales_up_to_what_it_needs() -> None:
    assert desired_replicas(1, 514, 50) == 11
    assert desired_replicas(1, 80, 50) == 2


@pytest.mark.parametrize(("low", "high", "target", "margin"), [(1, 3, 50, 1.5), (2, 10, 70, 1)])
def test_at_the_limit_the_most_replicas_come_back_to_the_fewest_even_with_the_margin(
    low: int, high: int, target: float, margin: float
) -> None:
    limit = idle_limit(low, high, target, margin)
    assert desired_replicas(high, limit * margin, target) == low
    assert desired_replicas(high, limit * margin * 1.2, target) > low


def test_the_limit_rejects_the_idle_reading_that_kept_two_replicas() -> None:
    assert idle_limit(1, 3, 50, 1.5) < 44
