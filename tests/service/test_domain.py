"""The service's vocabulary is the Agent Server's, and its one lease rule is the reaper's too."""

from __future__ import annotations

from enum import StrEnum
from typing import get_args

import langgraph_sdk.schema as sdk
import pytest

from threadkeeper.reaper import guard
from threadkeeper.service import crons
from threadkeeper.service.domain import (
    ACTIVE_RUN_STATUSES,
    ENDED_RUN_STATUSES,
    CancelAction,
    DisconnectMode,
    MultitaskStrategy,
    OnCompletion,
    RunStatus,
    SortOrder,
    ThreadStatus,
)
from threadkeeper.service.lease import busy_sql
from threadkeeper.service.thread_stream import ThreadStreamMode


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (RunStatus, sdk.RunStatus),
        (ThreadStatus, sdk.ThreadStatus),
        (MultitaskStrategy, sdk.MultitaskStrategy),
        (CancelAction, sdk.CancelAction),
        (OnCompletion, sdk.OnCompletionBehavior),
        (DisconnectMode, sdk.DisconnectMode),
        (SortOrder, sdk.SortOrder),
        (ThreadStreamMode, sdk.ThreadStreamMode),
        (crons.SortBy, sdk.CronSortBy),
    ],
)
def test_values_are_the_sdks(ours: type[StrEnum], theirs: object) -> None:
    assert sorted(member.value for member in ours) == sorted(get_args(theirs))


def test_every_run_status_is_active_or_ended() -> None:
    assert sorted(ACTIVE_RUN_STATUSES + ENDED_RUN_STATUSES) == sorted(RunStatus)
    assert not set(ACTIVE_RUN_STATUSES) & set(ENDED_RUN_STATUSES)


def test_reaper_guard_asks_the_services_busy_rule() -> None:
    """The reaper never imports the service, so it keeps its own copy of the rule."""
    assert busy_sql() in guard.LIVE_RUN_SQL
