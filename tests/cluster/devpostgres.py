"""The in-cluster dev Postgres of `deploy/dev/`: its image built here, its manifest applied.

`dev_postgres_image()` builds `deploy/dev/postgres/Dockerfile` as it is with BuildKit, like
the project's image (`appimage.py`): its `FROM debian:bookworm-slim` is the Debian-made base
(`rootfs.py`, a debootstrap of bookworm) through a named build context, and its `apt-get`
reaches the Debian mirror over the host's network. The OCI archive is cached by the build's
inputs (the directory's files, the base's digest, the BuildKit version).

`dev_postgres_manifests()` is `deploy/dev/postgres.yaml` with what `skaffold dev -p dev`
would change: the artifact's image name replaced by the built image. The node has no volume
provisioner; `claim_volume()` stands in for a laptop cluster's: a hostPath PersistentVolume
bound to the StatefulSet's claim, owned by the Postgres user.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import ctximage
from tests.cluster.appimage import PROJECT_ROOT, base_digest
from tests.cluster.build import ImageToolBinaries, NodeBinaries, Progress
from tests.cluster.image import ImageRef

DEV_DIR = PROJECT_ROOT / "deploy" / "dev"
CONTEXT = DEV_DIR / "postgres"
MANIFEST = DEV_DIR / "postgres.yaml"
# The skaffold artifact's name, which the manifest's `image:` names.
ARTIFACT = "threadkeeper-dev-postgres"
REPOSITORY = f"threadkeeper.local/{ARTIFACT}"
# The Dockerfile's base, substituted by the Debian-made one.
DEBIAN_BASE = "debian:bookworm-slim"
# The official image's `postgres` user, which the manifest's securityContext names.
POSTGRES_UID = 999
_RECIPE = "1"


def dev_postgres_image(
    tools: ImageToolBinaries, node: NodeBinaries, base_archive: Path, progress: Progress
) -> tuple[Path, ImageRef]:
    """The cached OCI archive of the dev Postgres image, built now if its inputs changed."""
    ref = ImageRef(REPOSITORY, ctximage.tree_key(_RECIPE, CONTEXT, base_digest(base_archive)))
    archive = ctximage.built_image(
        tools, node, CONTEXT, ref, "dev-postgres", progress, images={DEBIAN_BASE: base_archive}
    )
    return archive, ref


def dev_postgres_manifests(image: ImageRef, namespace: str) -> list[dict[str, Any]]:
    """`deploy/dev/postgres.yaml` in `namespace`, its image the one built here."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "StatefulSet":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"] == ARTIFACT:
                    container["image"] = str(image)
    return docs


def claim_volume(statefulset: dict[str, Any], namespace: str, directory: Path) -> dict[str, Any]:
    """A hostPath PersistentVolume for the StatefulSet's first claim (what a provisioner
    would make), in `directory`, which the Postgres user owns."""
    template = statefulset["spec"]["volumeClaimTemplates"][0]
    claim = f"{template['metadata']['name']}-{statefulset['metadata']['name']}-0"
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, POSTGRES_UID, POSTGRES_UID)
    directory.chmod(0o700)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}"},
        "spec": {
            "capacity": template["spec"]["resources"]["requests"],
            "accessModes": template["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": namespace, "name": claim},
            "hostPath": {"path": str(directory), "type": "Directory"},
        },
    }
