"""Images built here from a Dockerfile in a directory of the repository, as they are.

Like the project's image (`appimage.py`): BuildKit's built-in `dockerfile.v0` frontend, the
Dockerfile's `FROM` images given as named build contexts (an OCI archive made or built here,
or a directory), the result an OCI archive in the cache named by its key. Used for the dev
Postgres of `deploy/dev/` and the example user project's image.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tests.cluster.appimage import (
    base_layout,
    buildkit_build,
    buildkit_lock,
    file_digest,
    prune_old,
)
from tests.cluster.build import (
    BUILDKIT_VERSION,
    ImageToolBinaries,
    NodeBinaries,
    Progress,
    cache_root,
    locked,
)
from tests.cluster.image import ImageRef


def tree_key(recipe: str, directory: Path, *inputs: str) -> str:
    """A key over `directory`'s files (names, executable bits, contents) and `inputs`."""
    digest = hashlib.sha256(f"{recipe}\0{BUILDKIT_VERSION}\0".encode())
    for value in inputs:
        digest.update(value.encode() + b"\0")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        executable = os.access(path, os.X_OK)
        digest.update(f"{path.relative_to(directory).as_posix()}\0{executable}\0".encode())
        digest.update(file_digest(path).encode() + b"\0")
    return digest.hexdigest()[:12]


def _context_args(
    work: Path, images: Mapping[str, Path], directories: Mapping[str, Path]
) -> list[str]:
    args = []
    # BuildKit looks a named context up by the familiar name without `:latest`
    # (frontend/dockerui/namedcontext.go).
    images = {name.removesuffix(":latest"): archive for name, archive in images.items()}
    directories = {name.removesuffix(":latest"): d for name, d in directories.items()}
    for index, (name, archive) in enumerate(images.items()):
        layout, manifest = base_layout(archive, work / f"image-{index}")
        args += [
            f"--oci-layout=image-{index}={layout}",
            f"--opt=context:{name}=oci-layout://image-{index}@{manifest}",
        ]
    for index, (name, directory) in enumerate(directories.items()):
        args += [f"--local=dir-{index}={directory}", f"--opt=context:{name}=local:dir-{index}"]
    return args


def built_image(
    tools: ImageToolBinaries,
    node: NodeBinaries,
    context: Path,
    ref: ImageRef,
    cache_name: str,
    progress: Progress,
    images: Mapping[str, Path],
    directories: Mapping[str, Path] | None = None,
) -> Path:
    """The cached OCI archive `<cache>/<cache_name>_<key>.tar` of `context`'s Dockerfile,
    named `ref` (whose tag is the key).

    `images`: a `FROM` name -> an OCI archive standing in for it; `directories`: a `FROM`
    name -> a directory that is that image's whole filesystem.
    """
    final = cache_root() / f"{cache_name}_{ref.tag}.tar"
    with locked(buildkit_lock(), progress):
        if final.is_file():
            return final
        progress(f"building {ref} from {context / 'Dockerfile'} with BuildKit ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".ctx-image-", dir=cache_root()) as tmp:
            work = Path(tmp)
            partial = work / "image.tar"
            args = [
                "build",
                "--progress=plain",
                "--frontend=dockerfile.v0",
                f"--local=context={context}",
                f"--local=dockerfile={context}",
                # The built-in frontend, not the `# syntax=` image (see appimage.py).
                "--opt=cmdline=dockerfile.v0",
                *_context_args(work, images, directories or {}),
                f"--output=type=oci,dest={partial},name={ref}",
            ]
            log = cache_root() / f"{final.stem}.log"
            buildkit_build(tools, node, work, args, log, progress)
            partial.rename(final)
        prune_old(final)
    progress(f"built {ref} in {time.monotonic() - started:.0f}s")
    return final
