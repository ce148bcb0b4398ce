"""The image's cache key covers exactly what the build reads (no cluster, no build).

`.dockerignore` matching follows moby/patternmatcher; the expectations below are what
BuildKit sends for these patterns (checked against the project's own context: the same
77 files, 1.5 MB, that BuildKit reported transferring).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.cluster import appimage, build, dockerignore
from tests.cluster.appimage import PROJECT_ROOT
from tests.cluster.errors import ClusterError

_IGNORE = """\
# only what the build copies
*
!pyproject.toml
!service/
**/__pycache__
**/*.py[cod]
"""


def _write(root: Path, relative: str, text: str = "x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _names(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in dockerignore.admitted_files(root)]


def test_dockerignore_admits_only_the_listed_paths(tmp_path: Path) -> None:
    _write(tmp_path, ".dockerignore", _IGNORE)
    for relative in (
        "pyproject.toml",
        "service/app.py",
        "service/routes/threads.py",
        "service/__pycache__/app.cpython-311.pyc",
        "service/routes/stale.pyc",
        "docs/guide.md",
        ".venv/lib/site.py",
        "Dockerfile",
        "uv.lock",
    ):
        _write(tmp_path, relative)
    assert _names(tmp_path) == [
        "pyproject.toml",
        "service/app.py",
        "service/routes/threads.py",
    ]


def test_dockerignore_last_match_wins_and_wildcards_stay_in_one_segment(tmp_path: Path) -> None:
    _write(tmp_path, ".dockerignore", "docs/*.md\n!docs/keep.md\n/build\na?c\n")
    for relative in ("docs/a.md", "docs/keep.md", "docs/sub/b.md", "build/x", "abc", "abcd"):
        _write(tmp_path, relative)
    assert _names(tmp_path) == [".dockerignore", "abcd", "docs/keep.md", "docs/sub/b.md"]


def _tree(root: Path) -> Path:
    _write(root, "Dockerfile", "FROM scratch\n")
    _write(root, ".dockerignore", _IGNORE)
    _write(root, "pyproject.toml", "[project]\n")
    _write(root, "service/app.py", "print(1)\n")
    _write(root, "docs/guide.md", "words\n")
    return root


def _base(path: Path, digest: str) -> Path:
    index = json.dumps({"manifests": [{"digest": digest}]}).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    return path


@pytest.fixture
def uv(tmp_path: Path) -> Path:
    binary = _write(tmp_path / "uv-bin", "uv", "uv binary")
    _write(tmp_path / "uv-bin", "uvx", "uvx binary")
    return binary


def test_the_key_changes_with_admitted_files_only(tmp_path: Path, uv: Path) -> None:
    root = _tree(tmp_path / "tree")
    base = _base(tmp_path / "base.tar", "sha256:aa")
    before = appimage.image_key(root, base, uv)
    _write(root, "docs/guide.md", "other words\n")
    _write(root, "service/__pycache__/app.cpython-311.pyc", "bytecode")
    assert appimage.image_key(root, base, uv) == before
    for relative in ("service/app.py", "pyproject.toml", "Dockerfile", ".dockerignore"):
        path = root / relative
        original = path.read_text()
        path.write_text(original + "# changed\n")
        assert appimage.image_key(root, base, uv) != before, relative
        path.write_text(original)
    assert appimage.image_key(root, base, uv) == before


def test_the_key_changes_with_the_base_images(tmp_path: Path, uv: Path) -> None:
    root = _tree(tmp_path / "tree")
    base = _base(tmp_path / "base.tar", "sha256:aa")
    before = appimage.image_key(root, base, uv)
    assert appimage.image_key(root, _base(tmp_path / "other.tar", "sha256:bb"), uv) != before
    uv.with_name("uvx").write_text("another uvx")
    assert appimage.image_key(root, base, uv) != before


def test_the_projects_dockerfile_names_the_two_substituted_bases() -> None:
    names = appimage.base_names(PROJECT_ROOT / "Dockerfile")
    assert names.python.startswith("python:3.11")
    assert names.uv == f"ghcr.io/astral-sh/uv:{names.uv_version}"


def test_a_dockerfile_without_those_bases_is_refused(tmp_path: Path) -> None:
    dockerfile = _write(tmp_path, "Dockerfile", "FROM python:3.12\n")
    with pytest.raises(ClusterError, match="ARG PYTHON_IMAGE"):
        appimage.base_names(dockerfile)


def test_a_uv_of_another_version_that_cannot_fetch_the_right_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for an old uv: it reports its version and fails everything else.
    script = '#!/bin/sh\nif [ "$1" = --version ]; then echo uv 0.0.1; exit 0; fi\nexit 3\n'
    fake = _write(tmp_path / "bin", "uv", script)
    fake.chmod(0o755)
    _write(tmp_path / "bin", "uvx")
    monkeypatch.setenv("UV", str(fake))
    with pytest.raises(ClusterError, match=r"uv stage is uv 0\.13\.9, but .* is uv 0\.0\.1"):
        appimage.uv_binary("0.13.9")


def test_this_machines_uv_serves_when_it_is_the_dockerfiles() -> None:
    version = appimage.base_names(PROJECT_ROOT / "Dockerfile").uv_version
    uv = appimage.find_uv()
    if appimage._uv_version(uv) != version:
        pytest.skip(f"this machine's uv is not the Dockerfile's {version}")
    assert appimage.uv_binary(version) == uv


def test_no_uv_says_where_it_is_looked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterError, match=r"uv run.*or put uv on PATH"):
        appimage.find_uv()


def test_a_shim_on_path_is_followed_to_the_uv_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = appimage.find_uv()
    # A version manager's shim: a script that hands every call to the real uv.
    shim = _write(tmp_path / "shims", "uv", f'#!/bin/sh\nexec {real} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    found = appimage.find_uv()
    assert found.read_bytes()[:4] == b"\x7fELF"
    assert found.samefile(real)


def test_a_script_on_path_that_names_no_uv_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _write(tmp_path / "bin", "uv", "#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    with pytest.raises(ClusterError, match=r"is a script and did not name its uv: broken"):
        appimage.find_uv()


def test_old_archives_of_one_image_are_pruned_and_other_images_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each build key is a new archive of a whole image: only the newest few of a name stay."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    names = [f"refund-agent_{n:012x}.tar" for n in range(5)] + ["dev-postgres_000000000000.tar"]
    for age, name in enumerate(names):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1_000_000 - age, 1_000_000 - age))
    newest = tmp_path / names[0]

    appimage.prune_old(newest)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[:3], names[-1]])
