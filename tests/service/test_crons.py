"""The cron schedule arithmetic: the next tick in the cron's timezone, and its end time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from threadkeeper.service.crons import BadSchedule, check_schedule, next_tick, zone


def test_next_tick_is_in_the_crons_timezone_across_a_dst_change() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
    before = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)  # Saturday, before the spring change
    winter = next_tick("0 9 * * *", "America/New_York", before, None)
    assert winter == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    assert next_tick("0 9 * * *", None, before, None) == datetime(2026, 3, 8, 9, 0, tzinfo=UTC)


def test_next_tick_is_strictly_after_and_skips_every_missed_tick() -> None:
    at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert next_tick("0 0 * * *", None, at, None) == datetime(2026, 1, 2, tzinfo=UTC)
    five_days_on = datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC)
    assert next_tick("0 0 * * *", None, five_days_on, None) == datetime(2026, 1, 7, tzinfo=UTC)


def test_seconds_are_a_sixth_field() -> None:
    at = datetime(2026, 1, 1, 0, 0, 0, 400_000, tzinfo=UTC)
    assert next_tick("* * * * * */10", None, at, None) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)


def test_no_tick_after_the_end_time() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert next_tick("0 6 * * *", None, at, end) == datetime(2026, 1, 1, 6, tzinfo=UTC)
    assert next_tick("0 18 * * *", None, at, end) is None


@pytest.mark.parametrize("schedule", ["", "61 * * * *", "* * *", "every day", "* * * * * * * *"])
def test_bad_schedules_are_refused(schedule: str) -> None:
    with pytest.raises(BadSchedule, match="not a cron expression"):
        check_schedule(schedule)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "UTC+3"])
def test_bad_timezones_are_refused(name: str) -> None:
    with pytest.raises(BadSchedule, match="not an IANA timezone"):
        zone(name)
