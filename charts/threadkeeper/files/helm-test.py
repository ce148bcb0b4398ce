# `helm test` for threadkeeper: create a thread, talk to it through /chat, read it back, delete
# it. Runs in the application image (stdlib + PyJWT only), so no extra test image is needed.
# Environment: THREADKEEPER_URL, THREADKEEPER_AUTH (none|header|jwt), THREADKEEPER_AUTH_HEADER,
# THREADKEEPER_JWT_SECRET, THREADKEEPER_JWT_AUDIENCE, THREADKEEPER_JWT_ISSUER.
import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = os.environ["THREADKEEPER_URL"].rstrip("/")
MODE = os.environ.get("THREADKEEPER_AUTH", "none")
OWNER = "helm-test"


def step(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def call(method, path, body=None, expect=200, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    if status != expect:
        sys.exit(f"FAIL: {method} {path} answered {status}, expected {expect}: {text[:500]}")
    return json.loads(text) if text else None


def identity():
    if MODE == "header":
        return {os.environ.get("THREADKEEPER_AUTH_HEADER", "X-Forwarded-User"): OWNER}
    if MODE == "jwt":
        secret = os.environ.get("THREADKEEPER_JWT_SECRET")
        if not secret:
            return None
        import jwt

        claims = {"sub": OWNER, "exp": int(time.time()) + 300}
        if os.environ.get("THREADKEEPER_JWT_AUDIENCE"):
            claims["aud"] = os.environ["THREADKEEPER_JWT_AUDIENCE"]
        if os.environ.get("THREADKEEPER_JWT_ISSUER"):
            claims["iss"] = os.environ["THREADKEEPER_JWT_ISSUER"]
        return {"authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256")}
    return {}


def main():
    call("GET", "/readyz")
    step(f"ready: {BASE}/readyz")
    auth = identity()
    if auth is None:
        # Only the issuer's private key can mint a token the service accepts.
        call("POST", "/chat", {"message": "hello"}, expect=401)
        step("jwt with a public key: unauthenticated /chat is refused (401); no token to go on")
        return
    thread_id = call("POST", "/threads", {"metadata": {"source": "helm-test"}}, headers=auth)[
        "thread_id"
    ]
    step(f"created thread {thread_id}")
    try:
        first = call("POST", "/chat", {"thread_id": thread_id, "message": "hi"}, headers=auth)
        second = call("POST", "/chat", {"thread_id": thread_id, "message": "6*7?"}, headers=auth)
        for reply in (first, second):
            if reply["thread_id"] != thread_id or not reply["reply"]:
                sys.exit(f"FAIL: unexpected /chat answer {reply}")
        step(f"chat replied: {second['reply'][:120]!r}")
        thread = call("GET", f"/threads/{thread_id}", headers=auth)
        messages = (thread.get("values") or {}).get("messages") or []
        if len(messages) < 4:
            sys.exit(f"FAIL: the thread kept {len(messages)} messages of two turns")
        step(f"thread holds {len(messages)} messages")
    finally:
        call("DELETE", f"/threads/{thread_id}", expect=204, headers=auth)
    call("GET", f"/threads/{thread_id}", expect=404, headers=auth)
    step(f"deleted thread {thread_id}: OK")


main()
