"""Durations as the RetentionPolicy spells them: ``<n><unit>`` with s, m, h, d or w.

Kubernetes' own duration strings (``1h30m``) have no day or week unit, and retention periods are
counted in days, so the policy uses this smaller grammar. One unit per value keeps it readable in
``kubectl get`` output and trivially checkable by a CRD ``pattern``.
"""

from __future__ import annotations

import re
from datetime import timedelta

# Leading zeros and zero itself are refused: "0d" as maxIdle would delete every thread.
DURATION_PATTERN = r"^[1-9][0-9]{0,8}(s|m|h|d|w)$"

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# 100 years (36525 days). Longer periods mean "never" in practice, and reach back past the
# earliest time a checkpoint id can carry (1582) or a datetime can hold (year 1): an age
# cutoff there must not wrap around into "everything is old".
MAX_DURATION_SECONDS = 36525 * UNIT_SECONDS["d"]
MAX_DURATION = timedelta(seconds=MAX_DURATION_SECONDS)
# The largest count each unit may carry; the CRD's CEL rule spells out the same table.
MAX_COUNT = {unit: MAX_DURATION_SECONDS // seconds for unit, seconds in UNIT_SECONDS.items()}
_DURATION = re.compile(DURATION_PATTERN)


class DurationError(ValueError):
    """A string that is not ``<n><unit>``."""


def parse_duration(text: str) -> timedelta:
    """``"7d"`` -> ``timedelta(days=7)``."""
    match = _DURATION.match(text)
    if match is None:
        raise DurationError(
            f"{text!r} is not a duration: use <n><unit> with n >= 1 and unit one of "
            "s (seconds), m (minutes), h (hours), d (days), w (weeks), e.g. 30d"
        )
    # Checked on the integer: a timedelta of 999999999w would raise OverflowError first.
    seconds = int(text[:-1]) * UNIT_SECONDS[match.group(1)]
    if seconds > MAX_DURATION_SECONDS:
        raise DurationError(
            f"{text!r} is too long: durations are at most 100 years "
            f"({MAX_COUNT['d']}d, {MAX_COUNT['w']}w)"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact ``<n><unit>`` spelling of a whole number of seconds."""
    seconds = int(value.total_seconds())
    if seconds <= 0 or seconds != value.total_seconds():
        raise DurationError(f"{value} is not a positive whole number of seconds")
    for unit in ("w", "d", "h", "m"):
        if seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"
