"""`make test`'s worker groups, checked by running pytest-xdist on a suite laid out like ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.workers import BROWSER_GROUP, SERIAL_GROUP, group_of

REPO = Path(__file__).resolve().parents[2]
TESTS_IN_GROUP = 8
# Each test writes "<worker> <nodeid>" to a file of its own, so the run can be read back.
RECORDING_TEST = """
import os, pathlib

def _record(name):
    out = pathlib.Path(os.environ["RECORD_DIR"]) / name
    out.write_text(os.environ["PYTEST_XDIST_WORKER"] + " " + os.environ["PYTEST_CURRENT_TEST"])

{tests}
"""
CONFTEST = 'pytest_plugins = ["tests.support.workers"]\n'


def _module(tmp: Path, relative: str, prefix: str) -> None:
    tests = "\n".join(
        f"def test_{i}():\n    _record('{prefix}-{i:02d}')\n" for i in range(TESTS_IN_GROUP)
    )
    path = tmp / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDING_TEST.format(tests=tests))


def _run(tmp: Path, records: Path) -> dict[str, list[str]]:
    """Run the suite under `tmp` on two workers; each test's worker, by test, in order."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RECORD_DIR": str(records),
        "PYTEST_ADDOPTS": "",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-n", "2", "--dist", "loadgroup", "tests"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    workers: dict[str, list[str]] = {}
    for record in sorted(records.iterdir()):
        worker, _ = record.read_text().split(" ", 1)
        workers.setdefault(record.name.rsplit("-", 1)[0], []).append(worker)
    return workers


def test_group_of_names_the_serial_modules_and_the_browser_tests_and_no_other() -> None:
    assert group_of("tests/system/test_chaos.py::test_x[1]") == SERIAL_GROUP
    assert group_of("tests/browser/test_chat_ui.py::test_y") == BROWSER_GROUP
    other = "tests/system/test_sdk.py::test_z"
    assert group_of(other) == other


def test_each_group_runs_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    (suite / "tests").mkdir(parents=True)
    (suite / "tests" / "conftest.py").write_text(CONFTEST)
    _module(suite, "tests/system/test_chaos.py", "serial")
    _module(suite, "tests/browser/test_chat_ui.py", "browser")
    for name in ("a", "b"):
        _module(suite, f"tests/service/test_{name}.py", f"other_{name}")
    records = tmp_path / "records"
    records.mkdir()

    workers = _run(suite, records)

    assert len(set(workers["serial"])) == 1, workers
    assert len(set(workers["browser"])) == 1, workers
    assert len(workers["other_a"] + workers["other_b"]) == 2 * TESTS_IN_GROUP
