"""The statements a test's code sends, recorded at the cursor (``conn.execute`` goes through it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest


class Statements:
    """Records each statement sent while the test runs, as one line of text, if ``keep`` says
    so given its parameters. The pool's empty liveness checks are never kept."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, keep: Callable[[Any], bool] = lambda params: True
    ) -> None:
        self.sent: list[str] = []
        original = psycopg.AsyncCursor.execute

        async def recorded(cur: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            if query and keep(params):
                text = query.decode() if isinstance(query, bytes) else str(query)
                self.sent.append(" ".join(text.split()))
            return await original(cur, query, params, **kwargs)

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", recorded)


def naming(value: str) -> Callable[[Any], bool]:
    """Keeps statements with ``value`` among their parameters, so a replica's own housekeeping
    (sweeps, lease renewals) is left out."""

    def keep(params: Any) -> bool:
        values = params.values() if isinstance(params, dict) else params or ()
        return any(str(v) == value for v in values)

    return keep
