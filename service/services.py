"""The objects one process builds at start-up and every request handler shares.

They hang off ``app.state.services`` instead of module globals, so tests can build several
apps in one process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

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
    registry: Registry
    draining: bool = field(default=False)
    # Set when the replica stops serving, shortly before it exits: responses still open (a
    # wait or stream following a run) are cut, and their clients reconnect elsewhere.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # While draining: the worker handing back (or finishing) this replica's runs.
    drained: asyncio.Task[None] | None = None
