"""The ``threadkeeper-service`` command line: its failure exits."""

from __future__ import annotations

import pytest

from threadkeeper.service.cli import main


def test_invalid_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THREADKEEPER_LOG_FORMAT", "xml")
    assert main(["migrate"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_migrate_against_an_unreachable_database_exits_1(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none")
    monkeypatch.setenv("THREADKEEPER_LOG_FORMAT", "console")
    assert main(["migrate"]) == 1
