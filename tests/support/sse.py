"""A strict reader of the Agent Server SSE wire format, for tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: int | None


def events(response: httpx.Response) -> Iterator[Event]:
    """Parse events as they arrive; comments (heartbeats) are skipped."""
    name, data, ident = "message", [], None
    buffer = ""
    for chunk in response.iter_text():
        buffer += chunk
        while "\r\n" in buffer:
            line, buffer = buffer.split("\r\n", 1)
            if line == "":
                if data:
                    yield Event(name, json.loads("\n".join(data)), ident)
                name, data, ident = "message", [], None
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    ident = int(value)
