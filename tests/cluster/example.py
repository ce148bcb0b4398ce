"""The example user project's image (`examples/refund-agent`), built here as a user would.

Its Dockerfile is built as it is (`ctximage.py`): `FROM ${THREADKEEPER_IMAGE}` is the project's
image built from this tree (`appimage.py`) and the uv stage is the same `uv` directory the
project's build uses; `uv pip install` of the example reaches the package index over the host's
network, as on any build host. Cached by the example's files, the project image's key and uv.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tests.cluster import appimage, ctximage
from tests.cluster.appimage import PROJECT_ROOT, AppImage
from tests.cluster.build import ImageToolBinaries, NodeBinaries, Progress, cache_root
from tests.cluster.errors import ClusterError
from tests.cluster.image import ImageRef

EXAMPLE = PROJECT_ROOT / "examples" / "refund-agent"
REPOSITORY = "threadkeeper.local/refund-agent"
_RECIPE = "1"
_ARG = re.compile(r"^ARG\s+(THREADKEEPER_IMAGE|UV_IMAGE)=(\S+)\s*$", re.M)


def _base_names() -> dict[str, str]:
    found = dict(_ARG.findall((EXAMPLE / "Dockerfile").read_text()))
    if set(found) != {"THREADKEEPER_IMAGE", "UV_IMAGE"}:
        raise ClusterError(
            f"{EXAMPLE / 'Dockerfile'} no longer has `ARG THREADKEEPER_IMAGE=...` and "
            "`ARG UV_IMAGE=...`; tests/cluster/example.py substitutes those two images"
        )
    return found


def example_image(
    tools: ImageToolBinaries, node: NodeBinaries, app: AppImage, progress: Progress
) -> tuple[Path, ImageRef]:
    """The cached OCI archive of the example's image, built now if its inputs changed."""
    names = _base_names()
    uv = appimage.uv_binary(names["UV_IMAGE"].rsplit(":", 1)[1])
    key = ctximage.tree_key(_RECIPE, EXAMPLE, app.key, appimage.file_digest(uv))
    ref = ImageRef(REPOSITORY, key)
    with tempfile.TemporaryDirectory(prefix=".uv-stage-", dir=cache_root()) as work:
        archive = ctximage.built_image(
            tools,
            node,
            EXAMPLE,
            ref,
            "refund-agent",
            progress,
            images={names["THREADKEEPER_IMAGE"]: app.archive},
            directories={names["UV_IMAGE"]: appimage.uv_stage(Path(work), uv)},
        )
    return archive, ref
