"""The `helm test` Pod's script (files/helm-test.py) against a real service process.

The Pod runs `python -c <script>` in the application image; here the same script runs the
same way against `threadkeeper-service serve` on a test database, in each auth mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from tests.chart import support
from tests.support.processes import ServiceProcess

SCRIPT = (support.CHART / "files" / "helm-test.py").read_text()


def _run_script(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "THREADKEEPER_URL": url, **env}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


JWT = {
    "THREADKEEPER_JWT_SECRET": "a-shared-secret-of-32-bytes-or-more!",
    "THREADKEEPER_JWT_AUDIENCE": "threadkeeper",
    "THREADKEEPER_JWT_ISSUER": "https://issuer.example/",
}


def test_helm_test_script(replicas: Callable[..., ServiceProcess]) -> None:
    # Three replicas on one database, one per auth mode, started together (each takes
    # seconds to import).
    services = {
        "none": replicas("helm-test-none"),
        "header": replicas(
            "helm-test-header", THREADKEEPER_AUTH="header", THREADKEEPER_AUTH_HEADER="X-User"
        ),
        "jwt": replicas("helm-test-jwt", THREADKEEPER_AUTH="jwt", **JWT),
    }
    for service in services.values():
        service.start(migrate=False, wait=False)
    for service in services.values():
        service.wait_ready()

    runs = {
        "none": _run_script(services["none"].url),
        "header": _run_script(
            services["header"].url, THREADKEEPER_AUTH="header", THREADKEEPER_AUTH_HEADER="X-User"
        ),
        "jwt-secret": _run_script(services["jwt"].url, THREADKEEPER_AUTH="jwt", **JWT),
    }
    for mode, out in runs.items():
        assert out.returncode == 0, f"{mode}:\n{out.stdout}{out.stderr}"
        assert "deleted thread" in out.stdout and ": OK" in out.stdout, mode

    # With only a public key in the Secret the Pod cannot mint a token: it checks that an
    # unauthenticated request is refused, and passes.
    public = _run_script(services["jwt"].url, THREADKEEPER_AUTH="jwt")
    assert public.returncode == 0, public.stdout + public.stderr
    assert "refused (401)" in public.stdout

    # Wrong credentials fail the Pod, with the service's answer in its log.
    wrong = _run_script(services["header"].url, THREADKEEPER_AUTH="none")
    assert wrong.returncode != 0
    assert "answered 401" in wrong.stderr
