"""Which checkpoints a history prune keeps (the pure planning step)."""

from __future__ import annotations

from threadkeeper.reaper.history import Indexed, choose


def row(
    ns: str, cid: str, parent: str | None, root: str | None = None, legacy: bool = False
) -> Indexed:
    return Indexed(ns, cid, parent, root, legacy)


CHAIN = [row("", f"{i:02}", f"{i - 1:02}" if i else None) for i in range(10)]


def test_keep_last_and_cutoff() -> None:
    spaces, dropped = choose(CHAIN, 3, None)
    assert spaces[""].kept == {"07", "08", "09"}
    assert spaces[""].cut_points() == ["07"]
    assert spaces[""].dangling() == ["07"]
    assert dropped == []
    spaces, _ = choose(CHAIN, 3, "05")
    assert spaces[""].kept == {"05", "06", "07", "08", "09"}
    spaces, _ = choose(CHAIN, 20, "05")
    assert spaces[""].deleted == []


def test_forks_cut_every_branch_separately() -> None:
    # 00 - 01 - 02 - 03
    #        \- 04 - 05   (a fork from 01, made later)
    rows = [
        row("", "00", None),
        row("", "01", "00"),
        row("", "02", "01"),
        row("", "03", "02"),
        row("", "04", "01"),
        row("", "05", "04"),
    ]
    spaces, _ = choose(rows, 3, None)
    assert spaces[""].kept == {"03", "04", "05"}
    assert spaces[""].cut_points() == ["03", "04"]


def test_subgraph_calls_follow_their_root() -> None:
    rows = [
        *CHAIN,
        row("agent:a", "a1", None, root="02"),
        row("agent:a", "a2", "a1", root="02"),
        row("agent:b", "b1", None, root="08"),
        row("agent:b", "b2", "b1", root="08"),
        row("agent:b|tool:c", "c1", None, root="08"),
        row("agent:gone", "g1", None, root="missing"),
        row("persistent", "p1", None, root="02"),
        row("persistent", "p2", "p1", root="02"),
        row("agent:unknown", "u1", None, root=None),
    ]
    spaces, dropped = choose(rows, 2, None)
    assert dropped == ["agent:a", "agent:gone"]
    assert spaces["agent:b"].kept == {"b1", "b2"}
    assert spaces["persistent"].kept == {"p1", "p2"}
    assert spaces["agent:unknown"].kept == {"u1"}
    spaces, dropped = choose(rows, 1, None)
    assert dropped == ["agent:a", "agent:b", "agent:b|tool:c", "agent:gone"]


def test_pre_v4_checkpoints_keep_their_parent() -> None:
    rows = [row("", f"{i:02}", f"{i - 1:02}" if i else None, legacy=i >= 7) for i in range(10)]
    spaces, _ = choose(rows, 2, None)
    # 08 and 09 are kept; 08 is legacy -> 07; 07 is legacy -> 06; 06 is not.
    assert spaces[""].kept == {"06", "07", "08", "09"}
