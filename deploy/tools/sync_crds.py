"""The chart's copy of every CRD, generated from its one source in deploy/crds/.

Helm can only template files inside the chart, so the chart carries a copy; deploy/crds/ is
what `kubectl apply -f` users and the reaper's tests read, and the only file to edit.

    python deploy/tools/sync_crds.py           # write the chart's copies
    python deploy/tools/sync_crds.py --check   # exit 1 if a copy differs or is missing

tests/chart/test_render.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "deploy" / "crds"
COPIES = REPO / "charts" / "threadkeeper" / "files" / "crds"


def stale(source: Path = SOURCE, target: Path = COPIES) -> list[Path]:
    """Chart copies that are missing, differ from their source, or have no source."""
    sources = {p.name: p for p in source.glob("*.yaml")}
    copies = {p.name: p for p in target.glob("*.yaml")}
    wrong = [
        target / name
        for name, source in sources.items()
        if name not in copies or copies[name].read_bytes() != source.read_bytes()
    ]
    return wrong + [copy for name, copy in copies.items() if name not in sources]


def write(source: Path = SOURCE, target: Path = COPIES) -> None:
    target.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in source.glob("*.yaml")}
    for copy in target.glob("*.yaml"):
        if copy.name not in names:
            copy.unlink()
    for crd in source.glob("*.yaml"):
        (target / crd.name).write_bytes(crd.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies")
    args = parser.parse_args(argv)
    if not args.check:
        write()
        return 0
    wrong = stale()
    for path in wrong:
        hint = "run python deploy/tools/sync_crds.py"
        sys.stderr.write(f"{path.relative_to(REPO)} is stale: {hint}\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
