"""Ages of checkpoints, read from their time-ordered ids.

LangGraph checkpoint ids are UUIDv6 strings: the 60-bit timestamp (100 ns ticks since
1582-10-15) fills the leading hex digits, so comparing ids as text compares creation times.
``checkpoint_id < cutoff_id(t)`` therefore selects checkpoints created before ``t`` with a plain
primary-key range, without parsing ``checkpoint->>'ts'`` of every row.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

# What LangGraph writes (lowercase, version 6, RFC variant). Ids of any other shape carry no
# creation time; rules that delete by age leave them alone.
V6_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-6[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_V6_ID = re.compile(V6_ID_PATTERN)

# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The 60-bit timestamp field: a moment outside it has no id of its own.
_MAX_TICKS = (1 << 60) - 1


def cutoff_id(moment: datetime) -> str:
    """The smallest v6 id of ``moment``: every id created earlier sorts below it.

    Saturates instead of wrapping: a moment before the UUID epoch gives the smallest v6 id (no
    checkpoint is older), one past the last representable tick the largest.
    """
    if moment.tzinfo is None:
        raise ValueError("cutoff_id needs an aware datetime")
    delta = moment - _UNIX_EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    ticks = min(max(micros * 10 + _UUID_EPOCH_OFFSET, 0), _MAX_TICKS)
    value = ((ticks >> 12) & 0xFFFF_FFFF_FFFF) << 80
    value |= (0x6000 | (ticks & 0x0FFF)) << 64
    value |= 0x8000 << 48  # RFC 4122 variant; clock sequence and node all zero
    return str(uuid.UUID(int=value))


def is_time_ordered(checkpoint_id: str | None) -> bool:
    return checkpoint_id is not None and _V6_ID.match(checkpoint_id) is not None


def id_time(checkpoint_id: str) -> datetime | None:
    """Creation time of a v6 checkpoint id; None for ids of any other shape."""
    try:
        parsed = uuid.UUID(checkpoint_id)
    except ValueError:
        return None
    if parsed.version != 6:
        return None
    ticks = (parsed.int >> 80) << 12 | (parsed.int >> 64) & 0x0FFF
    micros = (ticks - _UUID_EPOCH_OFFSET) // 10
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
