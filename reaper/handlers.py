"""The kopf handlers of the operator: registration only, each one a call into the modules
that do the work.

- ``track`` (``on.event``) records a policy that appears or goes (``reaper.context``).
- ``tick`` (a **timer** per policy, ``tick_interval``) runs ``reaper.reconcile.tick`` and
  hands its status patch to kopf, which applies it through the status subresource after the
  handler returns. kopf runs every object's timer in its own asyncio task and a timer never
  overlaps with itself, so a long prune only delays its *own* policy's next tick.
- ``activity`` (``on.probe``) is the liveness check (``reaper.probe``).
- ``login`` (``on.login``) connects as ``reaper.kube.Connection`` says.

No finalizers: nothing has to happen when a policy is deleted, so the operator must never block
deletion; otherwise removing the operator before its policies (``helm uninstall``, a namespace
deletion) leaves them, and their namespace, stuck on kopf's finalizer. kopf marks every timer
as needing one, so ``reaper.compat.drop_finalizer_requirement`` clears the mark, and there are
no ``on.delete`` handlers. Without a finalizer kopf does not stop the timer of a deleted object
by itself (it only does on a deletionTimestamp), so ``track`` keeps the set of live policies
and the timer's ``when`` filter, which kopf re-checks on every event, stops the timer of a
deleted one. No kopf progress annotations are written either: there are no on.create/update
handlers.
"""

from __future__ import annotations

from typing import Any

import kopf

from threadkeeper.reaper import reconcile
from threadkeeper.reaper.compat import drop_finalizer_requirement
from threadkeeper.reaper.context import OperatorContext
from threadkeeper.reaper.kube import Connection
from threadkeeper.reaper.policy import GROUP, PLURAL, VERSION


def build_registry(
    ctx: OperatorContext, connection: Connection | None = None
) -> kopf.OperatorRegistry:
    """The operator's handlers; ``login`` only with a ``connection``."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.event(*resource, registry=registry)
    def track(
        type: str, body: kopf.Body, uid: str, namespace: str | None, name: str, **_: Any
    ) -> None:
        assert namespace is not None  # a namespaced resource
        if type == "DELETED":
            ctx.policy_gone(uid=uid, namespace=namespace, name=name)
        else:
            ctx.policy_seen(body, uid=uid, namespace=namespace, name=name)

    def alive(uid: str, **_: Any) -> bool:
        # kopf re-matches a timer's filter on every event, after the on.event spy above: on the
        # DELETED event this stops the timer (it would only do so by itself on a
        # deletionTimestamp, which needs the finalizer this operator refuses to set).
        return uid in ctx.live

    @kopf.timer(*resource, id="schedule", interval=ctx.tick_interval, when=alive, registry=registry)
    async def tick(
        body: kopf.Body,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        uid: str,
        namespace: str | None,
        name: str,
        **_: Any,
    ) -> None:
        assert namespace is not None  # a namespaced resource
        written = await reconcile.tick(
            ctx,
            body=body,
            meta=meta,
            current_status=status,
            uid=uid,
            namespace=namespace,
            name=name,
        )
        if written:
            patch.status.update(written)

    @kopf.on.probe(id="activity", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def activity(**_: Any) -> dict[str, object]:
        try:
            return ctx.heartbeat.check()
        except Exception as exc:
            # PermanentError: no retries, so the probe request fails now (HTTP 500).
            raise kopf.PermanentError(str(exc)) from exc

    if connection is not None:

        @kopf.on.login(registry=registry)
        def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
            return connection.login(settings)

    drop_finalizer_requirement(registry)
    return registry
