"""One shutdown budget: THREADKEEPER_SHUTDOWN_SECONDS and the timings derived from it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette

from threadkeeper.service.server import server_config
from threadkeeper.service.settings import CUT_MARGIN_SECONDS, DRAIN_HEADROOM_SECONDS, Settings


@pytest.mark.parametrize("shutdown", [2.0, 8.0, 25.0, 115.0])
def test_drain_and_cut_follow_the_shutdown_budget(shutdown: float) -> None:
    settings = Settings(shutdown_seconds=shutdown)
    assert settings.cut_seconds == shutdown - CUT_MARGIN_SECONDS
    assert settings.run_drain_seconds == max(0.0, shutdown - DRAIN_HEADROOM_SECONDS)
    assert settings.run_drain_seconds < settings.cut_seconds


def test_an_explicit_drain_wins_while_it_ends_before_the_cut() -> None:
    assert Settings(shutdown_seconds=25, drain_seconds=3).run_drain_seconds == 3
    with pytest.raises(ValidationError, match="THREADKEEPER_DRAIN_SECONDS must be less than"):
        Settings(shutdown_seconds=10, drain_seconds=9.5)


def test_uvicorn_gets_the_budget() -> None:
    config = server_config(Starlette(), "127.0.0.1", 0, shutdown_seconds=7.5)
    assert config.timeout_graceful_shutdown == 8


def test_a_budget_below_two_seconds_is_refused() -> None:
    with pytest.raises(ValidationError, match="shutdown_seconds"):
        Settings(shutdown_seconds=1)
