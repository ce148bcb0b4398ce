"""Log set-up: one JSON object per line, filtered by level before any processing.

Run in a child interpreter: ``configure_logging`` configures process-wide structlog and stdlib
logging with loggers cached on first use, which would leak into the other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import structlog
from threadkeeper.service.logs import configure_logging

configure_logging({fmt!r}, {level!r})
log = structlog.get_logger("service.test")
structlog.contextvars.bind_contextvars(thread_id="t-1", replica="r-1")
log.debug("a_debug_event")
log.info("an_info_event", n=1)
log.warning("a_warning_event", n=2)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("a_failure")
"""


def _stderr(level: str, fmt: str = "json") -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(fmt=fmt, level=level)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def _events(level: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in _stderr(level).splitlines() if line.strip()]


def test_events_below_the_level_are_dropped_and_the_rest_are_json_lines() -> None:
    events = _events("warning")
    assert [e["event"] for e in events] == ["a_warning_event", "a_failure"]
    warning, failure = events
    assert warning["level"] == "warning"
    assert warning["logger"] == "service.test"
    assert warning["thread_id"] == "t-1" and warning["replica"] == "r-1"
    assert warning["n"] == 2 and "timestamp" in warning
    assert failure["level"] == "error"
    assert "ZeroDivisionError" in str(failure["exception"])


def test_the_level_is_inclusive_and_debug_opens_everything() -> None:
    assert [e["event"] for e in _events("info")] == [
        "an_info_event",
        "a_warning_event",
        "a_failure",
    ]
    assert [e["event"] for e in _events("debug")] == [
        "a_debug_event",
        "an_info_event",
        "a_warning_event",
        "a_failure",
    ]


def test_the_console_format_draws_an_exception_once_and_without_a_warning() -> None:
    """The renderer warns when it finds an exception formatted before it; the set-up turns
    Python warnings into log lines, so the warning would be in the output."""
    text = _stderr("info", "console")
    assert "a_failure" in text
    assert text.count("ZeroDivisionError: division by zero") == 1
    assert "UserWarning" not in text and "format_exc_info" not in text
