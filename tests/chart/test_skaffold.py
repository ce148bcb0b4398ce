"""skaffold.yaml against skaffold's own v4beta14 JSON schema, and its references.

`skaffold run -p buildkit` itself runs on the one-node cluster (tests/cluster/test_skaffold.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart import support
from tests.cluster import dockerignore

SKAFFOLD = support.REPO / "skaffold.yaml"
BUILDCTL_BUILD = support.REPO / "deploy/skaffold/buildctl-build.sh"


def test_skaffold_matches_the_schema(skaffold_schema: Path) -> None:
    check = Path(sys.executable).parent / "check-jsonschema"
    out = support.run([check, "--schemafile", skaffold_schema, SKAFFOLD], check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_skaffold_schema_rejects_a_typo(skaffold_schema: Path, tmp_path: Path) -> None:
    bad = tmp_path / "skaffold.yaml"
    bad.write_text(SKAFFOLD.read_text().replace("chartPath:", "chartPth:"))
    check = Path(sys.executable).parent / "check-jsonschema"
    out = support.run([check, "--schemafile", skaffold_schema, bad], check=False)
    assert out.returncode != 0 and "chartPth" in out.stdout


def test_skaffold_wiring() -> None:
    config = yaml.safe_load(SKAFFOLD.read_text())
    assert config["apiVersion"] == "skaffold/v4beta14"
    (artifact,) = config["build"]["artifacts"]
    name = artifact["image"]
    assert (support.REPO / artifact["docker"]["dockerfile"]).is_file()
    (release,) = config["deploy"]["helm"]["releases"]
    assert (support.REPO / release["chartPath"] / "Chart.yaml").is_file()
    key = name.replace("-", "_").replace(".", "_").replace("/", "_")
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{key}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{key}}}}}",
    }
    for values in release["valuesFiles"]:
        assert (support.REPO / values).is_file(), values
    (forward,) = config["portForward"]
    assert forward["resourceName"] == release["name"] and forward["port"] == 8000
    dev = next(p for p in config["profiles"] if p["name"] == "dev")
    for raw in dev["manifests"]["rawYaml"]:
        assert (support.REPO / raw).is_file(), raw
    values, artifact = dev["patches"]
    assert (support.REPO / values["value"]).is_file()
    # The dev Postgres' image is built like the service's, and the manifest names it.
    assert artifact["path"] == "/build/artifacts/-"
    context = support.REPO / artifact["value"]["context"]
    assert (context / artifact["value"]["docker"]["dockerfile"]).is_file()
    (statefulset,) = [
        d
        for raw in dev["manifests"]["rawYaml"]
        for d in yaml.safe_load_all((support.REPO / raw).read_text())
        if d["kind"] == "StatefulSet"
    ]
    images = [c["image"] for c in statefulset["spec"]["template"]["spec"]["containers"]]
    assert images == [artifact["value"]["image"]]


def test_skaffold_values_render(helm: support.Helm) -> None:
    """Both values files skaffold deploys with are valid chart values."""
    for values in ("deploy/values/cluster.yaml", "deploy/dev/values.yaml"):
        docs = helm.render(None, f"--values={support.REPO / values}")
        deployment = support.find(docs, "Deployment", "tk-threadkeeper")
        env = support.env_of(support.containers(deployment)[0])
        secret = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        assert secret in ("threadkeeper-database", "threadkeeper-dev-database")
    dev_secret = next(
        d
        for d in yaml.safe_load_all((support.REPO / "deploy/dev/postgres.yaml").read_text())
        if d["kind"] == "Secret"
    )
    assert dev_secret["metadata"]["name"] == "threadkeeper-dev-database"
    assert dev_secret["stringData"]["url"].startswith("postgresql://")


def test_the_buildkit_profile_builds_the_same_artifact_with_buildctl() -> None:
    config = yaml.safe_load(SKAFFOLD.read_text())
    (default,) = config["build"]["artifacts"]
    buildkit = next(p for p in config["profiles"] if p["name"] == "buildkit")
    (artifact,) = buildkit["build"]["artifacts"]
    # The Helm release's image templates name this artifact, so it keeps the name.
    assert artifact["image"] == default["image"]
    assert artifact["context"] == default["context"]
    script = support.REPO / artifact["context"] / artifact["custom"]["buildCommand"]
    assert script.resolve() == BUILDCTL_BUILD
    assert os.access(BUILDCTL_BUILD, os.X_OK)
    # Its dependencies are the build context .dockerignore admits, and the files naming it.
    dependencies = artifact["custom"]["dependencies"]
    context = support.REPO / artifact["context"]
    patterns = dockerignore.parse((context / dockerignore.IGNORE_FILE).read_text())
    paths = set(dependencies["paths"]) - {"Dockerfile", dockerignore.IGNORE_FILE}
    assert {"Dockerfile", dockerignore.IGNORE_FILE} < set(dependencies["paths"])
    assert not [path for path in paths if dockerignore.excluded(patterns, path)]
    for admitted in dockerignore.admitted_files(context):
        relative = admitted.relative_to(context)
        assert relative.parts[0] in paths, relative
    assert dependencies["ignore"] == [p.text for p in patterns if not p.admits and p.text != "*"]
    # No Docker daemon to load the image into: skaffold reads the pushed image's digest,
    # and the release runs that digest.
    assert buildkit["build"]["local"]["push"] is True
    key = artifact["image"].replace("-", "_").replace(".", "_").replace("/", "_")
    (digest,) = buildkit["patches"]
    assert digest == {
        "op": "add",
        "path": "/deploy/helm/releases/0/setValueTemplates/image.digest",
        "value": f"{{{{.IMAGE_DIGEST_{key}}}}}",
    }


_SKAFFOLD_ENV = {
    "IMAGE": "registry.example/threadkeeper:abc123",
    "PUSH_IMAGE": "true",
    "BUILD_CONTEXT": str(support.REPO),
    "BUILDKIT_HOST": "unix:///nonexistent/buildkitd.sock",
}


@pytest.mark.parametrize(
    ("changed", "says"),
    [
        ({"IMAGE": ""}, "IMAGE is not set"),
        ({"BUILDKIT_HOST": ""}, "BUILDKIT_HOST is not set"),
        ({"PUSH_IMAGE": "yes"}, "PUSH_IMAGE is 'yes', not true or false"),
        ({"BUILD_CONTEXT": "/nonexistent"}, "no Dockerfile in the build context '/nonexistent'"),
    ],
)
def test_buildctl_build_refuses_bad_settings_in_one_line(
    changed: dict[str, str], says: str, tmp_path: Path
) -> None:
    # buildctl must not even start: a `buildctl` on PATH that would leave a mark.
    marker = tmp_path / "buildctl-ran"
    fake = tmp_path / "buildctl"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", **_SKAFFOLD_ENV, **changed}
    out = support.run(["sh", BUILDCTL_BUILD], env=env, check=False)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"buildctl-build.sh: {says}")
    assert not marker.exists()
