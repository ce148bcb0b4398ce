"""`started`, how the session fixtures start a cluster: a start that fails fails the test
with what did not start, and whatever started is stopped however the block ends."""

from __future__ import annotations

import pytest

from tests.cluster.errors import ClusterError
from tests.cluster.pytest_plugin import started


def _refuse() -> object:
    raise ClusterError("port 6443 is taken")


def test_a_failed_start_fails_the_test_naming_what() -> None:
    stopped: list[object] = []
    with (
        pytest.raises(pytest.fail.Exception, match="the node cluster did not start: port"),
        started(_refuse, stopped.append, "the node cluster"),
    ):
        pass
    assert stopped == []


def test_an_unnamed_start_fails_with_the_error_alone() -> None:
    with (
        pytest.raises(pytest.fail.Exception, match=r"^port 6443 is taken$"),
        started(_refuse, lambda _: None),
    ):
        pass


def test_what_started_is_stopped_also_when_the_block_fails() -> None:
    cluster = object()
    stopped: list[object] = []
    with pytest.raises(RuntimeError), started(lambda: cluster, stopped.append) as got:
        assert got is cluster
        raise RuntimeError("the test failed")
    assert stopped == [cluster]
