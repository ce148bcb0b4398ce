"""Is the operator still doing its job? The state behind the liveness probe.

kopf's liveness endpoint only proves that its HTTP task runs; a watch that died (nolar/kopf#1276)
or a timer that stopped ticking leaves the pod "alive" and useless. So the operator records
two kinds of activity here and the ``@kopf.on.probe`` handler calls :meth:`Heartbeat.check`,
which raises when:

- a known RetentionPolicy's timer has not ticked for ``stale_after`` seconds, unless that
  policy is in the middle of a prune (bounded by its own budget: maxDuration plus a grace);
- the operator patched a policy's status after a run and no watch event arrived within
  ``watch_grace`` seconds: the patch always changes ``lastRunTime``, so a working watch
  always brings it back. (kopf itself restarts a silent watch after
  ``settings.watching.inactivity_timeout``; this catches a watch task that is gone.)

With no policies there is nothing that should tick, and the probe passes. All times come from
an injectable monotonic clock so the logic is testable without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class OperatorStalled(RuntimeError):
    """The operator stopped doing its job; liveness must fail."""


@dataclass
class _Policy:
    name: str
    last_tick: float
    running_until: float | None = None


class Heartbeat:
    def __init__(
        self,
        *,
        stale_after: float,
        watch_grace: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = stale_after
        self.watch_grace = watch_grace
        self.clock = clock
        self._policies: dict[str, _Policy] = {}
        self._echo_expected_since: float | None = None

    # -- records

    def seen(self, uid: str, name: str) -> None:
        """A watch event of a policy (its timer will start ticking for it)."""
        now = self.clock()
        if self._echo_expected_since is not None and now >= self._echo_expected_since:
            self._echo_expected_since = None
        if uid not in self._policies:
            # Counts as a tick: the timer starts after kopf has processed this event.
            self._policies[uid] = _Policy(name, now)

    def gone(self, uid: str) -> None:
        self._policies.pop(uid, None)

    def ticked(self, uid: str) -> None:
        policy = self._policies.get(uid)
        if policy is not None:
            policy.last_tick = self.clock()

    def run_started(self, uid: str, budget: float) -> None:
        policy = self._policies.get(uid)
        if policy is not None:
            policy.running_until = self.clock() + budget

    def run_finished(self, uid: str, *, status_patched: bool) -> None:
        now = self.clock()
        policy = self._policies.get(uid)
        if policy is not None:
            policy.running_until = None
            policy.last_tick = now
        if status_patched and self._echo_expected_since is None:
            self._echo_expected_since = now

    # -- the probe

    def check(self) -> dict[str, object]:
        """Raise OperatorStalled when stalled; otherwise a small report for the probe body."""
        now = self.clock()
        for policy in self._policies.values():
            if policy.running_until is not None and now < policy.running_until:
                continue
            silent = now - policy.last_tick
            if silent > self.stale_after:
                raise OperatorStalled(
                    f"the timer of RetentionPolicy {policy.name} has not ticked for {silent:.0f}s"
                )
        if self._echo_expected_since is not None:
            waited = now - self._echo_expected_since
            if waited > self.watch_grace:
                raise OperatorStalled(
                    f"no watch event for {waited:.0f}s after a status patch: the watch is stalled"
                )
        return {"policies": len(self._policies)}
