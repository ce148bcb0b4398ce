"""The objects one process builds at start-up and every request handler shares.

They hang off ``app.state.services`` instead of module globals, so tests can build several
apps in one process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from langgraph.store.base import BaseStore

from threadkeeper.service.auth import Authenticator
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import Executor
from threadkeeper.service.metrics import Metrics
from threadkeeper.service.notify import Hub
from threadkeeper.service.registry import Registry
from threadkeeper.service.settings import Settings
from threadkeeper.service.worker import Worker


@dataclass
class Services:
    settings: Settings
    pool: Pool
    hub: Hub
    executor: Executor
    worker: Worker
    auth: Authenticator
    metrics: Metrics
    # The deployment's graphs by id (and their system assistants), for runs and state reads.
    registry: Registry
    # Long-term memory, shared by every owner; handlers scope it with OwnerStore.
    store: BaseStore
    draining: bool = field(default=False)
    # Set when the replica stops serving, shortly before it exits: responses still open (a
    # wait or stream following a run) are cut, and their clients reconnect elsewhere.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # While draining: the worker handing back (or finishing) this replica's runs.
    drained: asyncio.Task[None] | None = None
