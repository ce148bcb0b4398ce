"""Kubernetes' HorizontalPodAutoscaler rule for one resource metric, to size a test's load.

From the HPA's documented algorithm: desired = ceil(current * utilisation / target), no change
while utilisation / target is within the controller's tolerance (0.1 by default).
"""

from __future__ import annotations

import math

TOLERANCE = 0.1


def desired_replicas(current: int, utilisation: float, target: float) -> int:
    """The replicas the HPA asks for when `current` ones average `utilisation` percent."""
    ratio = utilisation / target
    if abs(ratio - 1.0) <= TOLERANCE:
        return current
    return math.ceil(current * ratio)


def idle_limit(min_replicas: int, max_replicas: int, target: float, margin: float) -> float:
    """The highest idle utilisation from which the HPA brings `max_replicas` idle replicas back
    to `min_replicas` with room to spare: `margin` times it still does."""
    return min_replicas * target / (max_replicas * margin)
