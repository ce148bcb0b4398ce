"""How `make test` spreads the default suite over pytest-xdist workers (`--dist loadgroup`); a
pytest plugin, loaded by the suite's `pytest_plugins`.

Every test may go to any worker, except two groups, each run on one worker in collection
order: the tests that stop or kill replicas or Postgres under load and time what follows
(`SERIAL_MODULES`: two of them at once on two cores would each slow the other's replicas past
the leases and drain budgets they measure), and the browser tests, which start a Next server per
worker and, when pytest runs without `make test` building it first, the chat UI's build (two
workers building `.next` at once race on it).

The groups are named here by path, not by a mark: pytest-xdist's own `xdist_group` mark
reaches its scheduler by appending the group to each test's node id, which pytest 9.2 no longer
lets a plugin change (pytest-xdist#1386), so the mark silently groups nothing. The scheduler
sees node ids only, and paths are in them.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

SERIAL_GROUP = "serial"
SERIAL_MODULES = frozenset(
    {
        "tests/system/test_chaos.py",
        "tests/system/test_database_outage.py",
        "tests/system/test_replicas.py",
        "tests/system/test_resilience.py",
        "tests/system/test_scale_down.py",
    }
)
BROWSER_GROUP = "browser"
BROWSER_DIR = "tests/browser/"


def group_of(nodeid: str) -> str:
    """The unit of work a test belongs to: a group's name, else the test alone."""
    path = nodeid.split("::", 1)[0]
    if path in SERIAL_MODULES:
        return SERIAL_GROUP
    if path.startswith(BROWSER_DIR):
        return BROWSER_GROUP
    return nodeid


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # untyped base
    """pytest-xdist's scope scheduling with `group_of` as the scope: the largest units (the two
    groups) are handed out first, then single tests to whichever worker is free."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling | None:
    """The scheduler for `--dist loadgroup`; None leaves other modes to pytest-xdist."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return GroupScheduling(config, log)
