# `helm uninstall` pre-delete hook: delete the chart's RetentionPolicy while the reaper still runs.
# The policy is a hook object (created post-install/post-upgrade), which Helm never deletes, and
# kopf keeps a finalizer on it that only a running reaper removes. So: DELETE it, wait for the
# reaper to release it, and if it does not within FINALIZER_TIMEOUT seconds (reaper down or
# disabled), remove the finalizer ourselves so uninstall and namespace deletion never hang.
# Standard library only; talks to the API with the Pod's ServiceAccount token.
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

SA_DIR = os.environ.get("SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
HOST = os.environ["KUBERNETES_SERVICE_HOST"]
PORT = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
NAMESPACE = os.environ["POD_NAMESPACE"]
POLICY = os.environ["POLICY"]
TIMEOUT = float(os.environ.get("FINALIZER_TIMEOUT", "60"))

BASE = f"https://[{HOST}]:{PORT}" if ":" in HOST else f"https://{HOST}:{PORT}"
URL = f"{BASE}/apis/threadkeeper.dev/v1alpha1/namespaces/{NAMESPACE}/retentionpolicies/{POLICY}"
with open(os.path.join(SA_DIR, "token")) as handle:
    TOKEN = handle.read().strip()
CONTEXT = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))


def step(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def call(method, body=None, content_type="application/json"):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL, data=data, method=method)
    request.add_header("authorization", f"Bearer {TOKEN}")
    request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request, context=CONTEXT, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 404
        sys.exit(f"FAIL: {method} {URL} answered {exc.code}: {exc.read().decode()[:500]}")


def gone_within(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if call("GET") == 404:
            return True
        time.sleep(1)
    return call("GET") == 404


if call("DELETE") == 404:
    step(f"RetentionPolicy {NAMESPACE}/{POLICY} does not exist")
    sys.exit(0)
step(f"deleted RetentionPolicy {NAMESPACE}/{POLICY}; waiting for the reaper to release it")
if gone_within(TIMEOUT):
    step("gone")
    sys.exit(0)
step(f"still there after {TIMEOUT:.0f}s (reaper not running?): removing its finalizers")
call("PATCH", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
if not gone_within(30):
    sys.exit(f"FAIL: RetentionPolicy {NAMESPACE}/{POLICY} is still there")
step("gone")
