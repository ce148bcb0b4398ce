"""The private langgraph names the service relies on (``service.compat``) still exist with the
parameters it uses, and behave as it expects: an upgrade that changes them fails here."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage

from threadkeeper.service import compat


def test_no_private_name_has_drifted() -> None:
    assert compat.drift() == []


def test_drift_names_a_method_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a parameter list it does not expect is reported."""
    changed = {**compat.SAVER_PRIVATE_METHODS, "_load_blobs": ("values",)}
    monkeypatch.setattr(compat, "SAVER_PRIVATE_METHODS", changed)
    assert compat.drift() == [
        "AsyncPostgresSaver._load_blobs takes ('blob_values',), not ('values',)"
    ]


def test_the_messages_reducer_folds_writes_as_add_messages_does() -> None:
    hi = HumanMessage("hi", id="1")
    reply = AIMessage("hello", id="2")
    state = compat.messages_delta_reducer([], [[hi], [reply]])
    assert [m.id for m in state] == ["1", "2"]
    assert [m.id for m in compat.messages_delta_reducer(state, [[RemoveMessage(id="1")]])] == ["2"]


def test_a_delta_snapshot_wraps_its_value() -> None:
    snapshot = compat.DeltaSnapshot([1, 2])
    assert snapshot.value == [1, 2]
