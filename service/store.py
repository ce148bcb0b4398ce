"""Long-term memory: LangGraph's ``AsyncPostgresStore`` on the service's pool, scoped by owner.

One store per replica, on the same pool as everything else. The stock store's ``aget``,
``aput``, ... queue every call behind ONE background task that runs one batch at a time: a slow
call (a row lock, an embedding request) holds up every other caller of the replica, as the
stock saver's lock does. ``PooledPostgresStore`` hands each call straight to ``abatch``, which
on a pool checks out a connection of its own, so calls run side by side. A call that reads one
thing (the demo agent's ``aget`` every turn) is one statement, sent without the pipeline the
stock store wraps every batch in.

Owner isolation lives in one place, ``OwnerStore``: every namespace a caller names gets the
owner's label prepended on the way in and loses it on the way out. Graphs get an
``OwnerStore`` for the run's owner and the HTTP API one for the caller, never the raw store,
so neither can name a namespace outside its owner's: the owner label is not a value the
caller supplies, and the store matches namespaces segment by segment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.postgres.base import PostgresIndexConfig

from threadkeeper.service.db import Pool
from threadkeeper.service.deployment import StoreConfig
from threadkeeper.service.put_batches import PutBatches

# Namespace labels cannot hold "."; an owner (an email, a JWT subject) may. Hex keeps every
# owner one label, and no owner's label a prefix-segment of another's.
OWNER_LABEL_PREFIX = "o"


def owner_label(owner: str) -> str:
    """The namespace label an owner's items live under."""
    return OWNER_LABEL_PREFIX + owner.encode().hex()


# An item past its TTL is never served, whether or not the reaper swept it yet (the stock
# store serves it until swept). Any item may carry a TTL, with or without a ``ttl`` config.
EXPIRED_HIDDEN: TTLConfig = {"omit_expired": True}


@dataclass(frozen=True)
class StoreSettings:
    """The store's configuration as ``AsyncPostgresStore`` takes it."""

    index: PostgresIndexConfig | None = None
    ttl: TTLConfig = field(default_factory=lambda: TTLConfig(**EXPIRED_HIDDEN))

    @classmethod
    def of(cls, config: StoreConfig | None, embed: Any = None) -> StoreSettings:
        """From ``langgraph.json``'s ``store`` key; ``embed`` is the resolved embedding."""
        if config is None:
            return cls()
        index: PostgresIndexConfig | None = None
        if config.index is not None:
            index = {"dims": config.index.dims, "embed": embed or config.index.embed}
            if config.index.fields is not None:
                index["fields"] = list(config.index.fields)
        ttl: dict[str, Any] = dict(EXPIRED_HIDDEN)
        if config.ttl is not None:
            ttl["refresh_on_read"] = config.ttl.refresh_on_read
            if config.ttl.default_ttl is not None:
                ttl["default_ttl"] = config.ttl.default_ttl
            if config.ttl.sweep_interval_minutes is not None:
                ttl["sweep_interval_minutes"] = config.ttl.sweep_interval_minutes
        return cls(index=index, ttl=cast(TTLConfig, ttl))


# Put batches one replica writes at a time (see ``put_batches``): few enough that puts arriving
# together under load share commits, enough that a put held up by a row lock holds up no other.
PUT_BATCHES_IN_FLIGHT = 4


# Each read op's runner in the stock store, which sends one statement per op.
READ_RUNNERS: dict[type[Op], str] = {
    GetOp: "_batch_get_ops",
    SearchOp: "_batch_search_ops",
    ListNamespacesOp: "_batch_list_namespaces_ops",
}


class PooledPostgresStore(AsyncPostgresStore):
    """``AsyncPostgresStore`` without its one-at-a-time queue: every call is its own batch,
    except puts arriving while ``PUT_BATCHES_IN_FLIGHT`` batches of puts are being written,
    which go together as the next one."""

    aget = BaseStore.aget
    asearch = BaseStore.asearch
    aput = BaseStore.aput
    adelete = BaseStore.adelete
    alist_namespaces = BaseStore.alist_namespaces

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._puts = PutBatches(self._write_puts, PUT_BATCHES_IN_FLIGHT)

    def _ensure_task(self) -> None:
        """No background task: nothing is queued for it."""

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        puts = [op for op in listed if isinstance(op, PutOp)]
        if puts and len(puts) == len(listed):
            await self._puts.put(puts)
            return [None] * len(puts)
        return await super().abatch(listed)

    async def _write_puts(self, ops: Sequence[PutOp]) -> None:
        await super().abatch(ops)

    async def _execute_batch(
        self,
        grouped_ops: dict[type[Op], list[tuple[int, Op]]],
        results: list[Result],
        conn: Any = None,
    ) -> None:
        # One read op is one statement (the stock SQL, TTL refresh included), so the pipeline
        # the stock store opens for every batch buys nothing and costs a Sync round trip and
        # the pipeline's bookkeeping: about 0.1 ms of CPU and half the read's wall time. Graphs
        # that read memory every turn (the demo agent's ``aget``) pay that every turn.
        ops = _single_op(grouped_ops)
        runner = None if ops is None else READ_RUNNERS.get(type(ops[0][1]))
        if ops is None or runner is None:
            await super()._execute_batch(grouped_ops, results, conn)
            return
        read: Callable[..., Awaitable[None]] = getattr(self, runner)
        async with self._cursor() as cur:
            await read(ops, results, cur)


def _single_op(
    grouped_ops: dict[type[Op], list[tuple[int, Op]]],
) -> list[tuple[int, Op]] | None:
    """The batch as ``grouped_ops`` holds it, if it is one op; else None."""
    groups = list(grouped_ops.values())
    return groups[0] if len(groups) == 1 and len(groups[0]) == 1 else None


def open_store(pool: Pool, settings: StoreSettings) -> PooledPostgresStore:
    """The replica's store. Expired items are not swept here: the reaper sweeps once per
    cluster (a timer in every replica would do the work N times, contending for the rows)."""
    return PooledPostgresStore(pool, index=settings.index, ttl=settings.ttl)  # type: ignore[arg-type]


def embed_from_path(spec: str, base_dir: Path) -> Any:
    """The function ``path.py:function`` names (relative to the config's folder)."""
    from threadkeeper.service.graphs import GraphSpec, import_spec

    return import_spec(GraphSpec.parse("store.index.embed", spec, base_dir))


def is_path_spec(embed: str) -> bool:
    where, sep, _ = embed.rpartition(":")
    return bool(sep) and (where.endswith(".py") or "/" in where)


class OwnerStore(BaseStore):
    """``inner`` as one owner sees it: their namespaces only, without the owner label."""

    supports_ttl = True

    def __init__(self, inner: BaseStore, owner: str) -> None:
        self.inner = inner
        self.label = owner_label(owner)
        self.ttl_config = inner.ttl_config

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return [self._out(r) for r in self.inner.batch([self._in(op) for op in ops])]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return [self._out(r) for r in await self.inner.abatch([self._in(op) for op in ops])]

    def _in(self, op: Op) -> Op:
        # Ops handed to batch() directly skip BaseStore's checks; a label with "." would
        # otherwise read as two segments of the owner's own space.
        validate_op_namespace(op)
        match op:
            case GetOp() | PutOp():
                return op._replace(namespace=(self.label, *op.namespace))
            case SearchOp():
                return op._replace(namespace_prefix=(self.label, *op.namespace_prefix))
            case ListNamespacesOp():
                return self._list_in(op)
        raise TypeError(f"unknown store operation {type(op).__name__}")

    def _list_in(self, op: ListNamespacesOp) -> ListNamespacesOp:
        conditions = list(op.match_conditions or ())
        prefixes = [c for c in conditions if c.match_type == "prefix"]
        others = [c for c in conditions if c.match_type != "prefix"]
        scoped = [MatchCondition("prefix", (self.label, *c.path)) for c in prefixes]
        if not scoped:
            scoped = [MatchCondition("prefix", (self.label,))]
        depth = None if op.max_depth is None else op.max_depth + 1
        return op._replace(match_conditions=tuple(scoped + others), max_depth=depth)

    def _out(self, result: Result) -> Result:
        if isinstance(result, list):
            return cast(Result, [self._strip(r) for r in result])
        return cast(Result, self._strip(result))

    def _strip(self, value: object) -> object:
        if isinstance(value, tuple):  # a namespace from list_namespaces
            return value[1:]
        if isinstance(value, SearchItem):
            return SearchItem(
                value.namespace[1:],
                value.key,
                value.value,
                value.created_at,
                value.updated_at,
                value.score,
            )
        if isinstance(value, Item):
            return Item(
                value=value.value,
                key=value.key,
                namespace=value.namespace[1:],
                created_at=value.created_at,
                updated_at=value.updated_at,
            )
        return value
