"""Pruning the model registry: what stays, what goes, and the errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from workbench.ml.exceptions import RegistryError
from workbench.ml.registry import ModelRegistry


def _publish(registry: ModelRegistry, day: int) -> str:
    with registry.staging() as staged:
        (staged / "weights.bin").write_bytes(bytes([day]) * 16)
        return registry.publish(staged, dt.date(2024, 3, day), {"rows": {"trained": 1}})


def test_prune_keeps_the_newest_and_the_current_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    versions = [_publish(registry, day) for day in range(1, 6)]
    registry.set_current(versions[0])  # rolled back to the oldest: it must survive
    (registry.versions_dir / ".deleting-v0000-2024-02-29").mkdir()  # left by a killed prune

    assert registry.prune(2) == versions[1:3]
    assert registry.versions() == [versions[0], *versions[3:]]
    assert registry.current() == versions[0]
    registry.verify(versions[4])  # what stays is intact
    assert not list(registry.versions_dir.glob(".deleting-*"))
    assert registry.prune(2) == []  # idempotent
    assert _publish(registry, 6).startswith("v0006-")  # ids are never reused


def test_prune_refuses_a_bad_keep_and_the_cli_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    registry = ModelRegistry(tmp_path / "home" / "models")
    _publish(registry, 1)
    with pytest.raises(RegistryError, match="keep must be an integer >= 1"):
        registry.prune(0)
    assert main(["--home", str(tmp_path / "home"), "models", "prune", "--keep", "0"]) == 2
    assert "keep must be an integer >= 1" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "home"), "models", "prune", "--keep", "1"]) == 0
    assert "deleted 0 version(s)" in capsys.readouterr().out
