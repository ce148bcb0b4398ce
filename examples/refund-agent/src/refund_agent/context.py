"""What a run is configured with (the assistant's `context`, merged under the run's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Context:
    approval_threshold: float = 100.0
    reviewer: str = "support"
