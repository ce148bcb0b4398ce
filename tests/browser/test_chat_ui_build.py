"""The chat UI's kept build: found again by what it was built from, wherever the clone is.

A clone at another path (CI's fresh clone) reuses the build kept in the user's cache when its
inputs are the same, and builds from source when any input changed. Whether a build made at
one path serves from another is what ``test_chat_ui.py`` shows whenever it runs on a kept build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.browser.chat_ui import APP, BUILD_FILES, build_stamp


def _copy_inputs(to: Path) -> Path:
    """The files a build reads (not node_modules, not .next), copied to ``to``."""
    shutil.copytree(APP / "src", to / "src")
    for name in BUILD_FILES:
        if (APP / name).exists():
            shutil.copy2(APP / name, to / name)
    return to


def test_a_clone_at_another_path_has_the_same_stamp(tmp_path: Path) -> None:
    here = _copy_inputs(tmp_path / "one" / "chat-ui")
    there = _copy_inputs(tmp_path / "elsewhere" / "deeper" / "chat-ui")
    assert build_stamp(here) == build_stamp(there) == build_stamp(APP)


def test_any_changed_input_changes_the_stamp(tmp_path: Path) -> None:
    app = _copy_inputs(tmp_path / "chat-ui")
    stamps = {build_stamp(app)}
    source = next(p for p in sorted((app / "src").rglob("*.tsx")))
    source.write_text(source.read_text() + "\n// changed\n")
    stamps.add(build_stamp(app))
    lock = app / "package-lock.json"
    lock.write_text(lock.read_text().replace('"lockfileVersion"', '"lockfileVersion" ', 1))
    stamps.add(build_stamp(app))
    (app / "src" / "added.ts").write_text("export const added = 1;\n")
    stamps.add(build_stamp(app))
    (app / "next.config.mjs").unlink()
    stamps.add(build_stamp(app))
    assert len(stamps) == 5
