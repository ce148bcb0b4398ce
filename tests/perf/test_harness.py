"""The benchmark harness's own arithmetic: the figures in the table depend on it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.perf import harness


def test_stat_is_median_min_max() -> None:
    stat = harness.Stat.of([3.0, 1.0, 2.0, 10.0])
    assert (stat.median, stat.min, stat.max, stat.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        harness.Stat.of([])


def test_ratios_are_paired_per_repetition() -> None:
    # Medians of each side would give 20/10 = 2; the paired ratios say ours was always 1x-3x.
    ours = [10.0, 20.0, 30.0]
    baseline = [10.0, 10.0, 10.0]
    assert harness.paired_ratios(ours, baseline) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        harness.paired_ratios([1.0], [1.0, 2.0])


def test_goal_is_judged_on_the_median_ratio() -> None:
    row = harness.compare(
        "b", "m", "u", [3.0, 1.0, 2.0], "base", [1.0, 1.0, 1.0],
        goal=">= 2x", goal_check=lambda r: r >= 2,
    )  # fmt: skip
    assert row.ratio is not None and row.ratio.median == 2.0
    assert row.goal_met is True
    missed = harness.alone("b", "m", "u", [5.0, 6.0, 7.0], goal="< 5", goal_check=lambda v: v < 5)
    assert missed.goal_met is False


async def test_interleave_rotates_who_goes_first() -> None:
    order: list[str] = []

    def contender(name: str):  # type: ignore[no-untyped-def]
        async def measure(rep: int) -> float:
            order.append(name)
            return float(rep)

        return measure

    samples = await harness.interleave(3, {"a": contender("a"), "b": contender("b")})
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [0.0, 1.0, 2.0], "b": [0.0, 1.0, 2.0]}


def test_table_and_json_carry_every_row(tmp_path: Path) -> None:
    info = {
        "cores": 2, "cpu": "cpu", "platform": "linux", "python": "3.11", "postgres": "18",
        "commit": "abc", "packages": {"langgraph": "1"},
    }  # fmt: skip
    rows = [
        harness.compare("1. x", "throughput", "turns/s", [2.0], "(a)", [1.0], goal=">= 1.5x",
                        goal_check=lambda r: r >= 1.5),
        harness.alone("9. y", "failover", "s", [1.0]),
    ]  # fmt: skip
    text = harness.render(info, rows, {"7": "RuntimeError: boom"})
    assert "1. x" in text and "9. y" in text and " ok" in text
    assert "FAILED 7: RuntimeError: boom" in text
    out = tmp_path / "r.json"
    harness.write_json(out, info, rows, {}, quick=True)
    data = json.loads(out.read_text())
    assert [r["benchmark"] for r in data["rows"]] == ["1. x", "9. y"]
    assert data["rows"][0]["ratio"]["median"] == 2.0 and data["quick"] is True


# pg_control is rewritten by the checkpoint itself, before CHECKPOINT returns.
LAST_CHECKPOINT_SQL = "SELECT checkpoint_lsn FROM pg_control_checkpoint()"


def test_settle_checkpoints_the_server(pg_server: str) -> None:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        before = conn.execute(LAST_CHECKPOINT_SQL).fetchone()
        assert harness.settle(pg_server) is True
        after = conn.execute(LAST_CHECKPOINT_SQL).fetchone()
    assert before is not None and after is not None and after[0] != before[0]


def test_settle_without_the_privilege_says_so(pg_server: str) -> None:
    role = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        try:
            url = conninfo.make_conninfo(pg_server, user=role, dbname="postgres")
            assert harness.settle(url) is False
        finally:
            conn.execute(f"DROP ROLE {role}")
