"""The Dockerfile: hadolint, and the properties the chart relies on.

No container engine exists where these tests run, so the image is never built here; these
checks read the Dockerfile instead.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.chart import support

DOCKERFILE = support.REPO / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
    return args, stages


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: it comes with the dev group (`uv sync`)", pytrace=False)
    return found


@pytest.mark.parametrize(
    "dockerfile", [DOCKERFILE, support.REPO / "deploy/dev/postgres/Dockerfile"], ids=str
)
def test_hadolint_has_no_findings(dockerfile: Path) -> None:
    out = support.run([_hadolint(), "--no-color", str(dockerfile)], check=False)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_bases_are_pinned() -> None:
    args, stages = _stages()
    python = args["PYTHON_IMAGE"]
    assert re.fullmatch(
        r"python:3\.1[1-3]\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", python
    )
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        base = args["PYTHON_IMAGE"] if stage.base == "${PYTHON_IMAGE}" else stage.base
        assert ":" in base and not base.endswith(":latest"), f"unpinned base {stage.base}"
    uv = next(s for s in stages if s.base.startswith("ghcr.io/astral-sh/uv"))
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", uv.base)


def test_build_stage_uses_the_lock_and_compiles_bytecode() -> None:
    _, stages = _stages()
    build = next(s for s in stages if s.name == "build")
    env = " ".join(build.all("ENV"))
    assert "UV_COMPILE_BYTECODE=1" in env
    assert "UV_PYTHON_DOWNLOADS=0" in env
    assert any(c.startswith("--from=uv /uv /uvx /bin/") for c in build.all("COPY"))
    syncs = [r for r in build.all("RUN") if "uv sync" in r]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--locked" in sync and "--no-dev" in sync
    assert "--no-editable" in syncs[-1]


def test_runtime_stage() -> None:
    _, stages = _stages()
    runtime = next(s for s in stages if s.name == "runtime")
    build = next(s for s in stages if s.name == "build")
    # The venv's interpreter path only works on the same base.
    assert runtime.base == build.base == "${PYTHON_IMAGE}"
    assert runtime.all("COPY") == ["--from=build /app/.venv /app/.venv"]
    # No compilers or package installs in the final image.
    for run in runtime.all("RUN"):
        assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", run), run
    (user,) = runtime.all("USER")
    stage_args = {k: v for k, _, v in (a.partition("=") for a in runtime.all("ARG"))}
    uid, _, gid = re.sub(r"\$\{(\w+)\}", lambda m: stage_args[m[1]], user).partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit()
    values = yaml.safe_load((support.CHART / "values.yaml").read_text())
    assert int(uid) == values["securityContext"]["runAsUser"], "chart and image disagree"
    assert runtime.all("ENTRYPOINT") == ['["threadkeeper-service"]']
    assert runtime.all("CMD") == ['["serve", "--host", "0.0.0.0", "--port", "8000"]']
    env = " ".join(runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "/app/.venv/bin" in env
    reaper = next(s for s in stages if s.name == "reaper")
    assert reaper.base == "runtime"
    assert reaper.all("ENTRYPOINT") == ['["threadkeeper-reaper"]']
    # The default target (the last stage) is the service image.
    assert stages[-1].base == "runtime"


def test_console_scripts_exist() -> None:
    project = tomllib.loads((support.REPO / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert {"threadkeeper-service", "threadkeeper-reaper"} <= scripts.keys()
    assert any(d.startswith("psycopg[binary") for d in project["project"]["dependencies"])


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        hit = fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern)
        if pattern.startswith("**/"):
            hit = hit or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern[3:])
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (support.REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "uv.lock", "README.md", "service/app.py", "reaper/cli.py"):
        assert not _ignored(needed, patterns), needed
    for unwanted in (
        ".venv/bin/python",
        "tests/conftest.py",
        ".git/HEAD",
        "service/__pycache__/x.pyc",
    ):
        assert _ignored(unwanted, patterns), unwanted
