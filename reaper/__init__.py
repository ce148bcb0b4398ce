"""threadkeeper's reaper: prunes LangGraph checkpoints and threads by RetentionPolicy.

A separate deployable from the service: it never imports ``service`` and works on the service's
tables (``threads``, ``runs``, LangGraph's ``checkpoints``, ``checkpoint_blobs``,
``checkpoint_writes``) with SQL of its own. It reads and deletes; it never migrates.

Modules: ``policy`` (the RetentionPolicy model) and ``durations``; ``engine`` (one prune run) with
``candidates`` (what to look at), ``guard`` (per-thread transaction and locks), ``deletion``
(whole threads, orphans), ``history`` (depth) and ``delta`` (DeltaChannel re-snapshots);
``stats`` and ``metrics``; ``cli`` (``threadkeeper-reaper``). The operator (``cli run``):
``operator`` (the entry point) with ``handlers`` (kopf registration), ``reconcile`` (one tick of
one policy), ``schedule`` (when it is due), ``status`` (status fields, conditions, Events),
``sizes`` (table sizes), ``context`` (per-policy memory, series, heartbeat), ``kube`` (API
connection, Secret, Events), ``probe`` (liveness) and ``compat`` (kopf internals).
"""
