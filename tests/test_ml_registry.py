"""Pruning the model registry: what stays, what goes, and the errors."""

from __future__ import annotations

import contextlib
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


def _publish_window(registry: ModelRegistry, day: int, seq_hint: int = 0) -> str:
    with registry.staging() as staged:
        (staged / "weights.bin").write_bytes(day.to_bytes(1, "big") + seq_hint.to_bytes(4, "big"))
        return registry.publish(staged, dt.date(2024, 3, day), {"window_days": [f"2024-03-{day:02d}"]})


def test_training_moves_current_only_forward_and_never_moves_a_pin(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    d1, d3 = _publish_window(registry, 1), _publish_window(registry, 3)
    assert registry.advance_current(d1) and registry.advance_current(d3)
    late = _publish_window(registry, 2)  # a failed day 2, retried after day 3 trained
    assert not registry.advance_current(late)
    assert registry.current() == d3
    registry.set_current(d1, actor="alice", reason="v3 is noisy")  # a person rolls back: pinned
    d4 = _publish_window(registry, 4)
    assert not registry.advance_current(d4)
    assert registry.current() == d1 and registry.pinned() == d1
    assert registry.set_current("auto", actor="alice") == d4  # unpin: the newest window
    assert registry.pinned() is None and registry.current() == d4
    moves = [(r["actor"], r["from"], r["to"], r["pinned"]) for r in registry.history()]
    assert moves == [("training", None, d1, False), ("training", d1, d3, False), ("alice", d3, d1, True),
                     ("alice", d1, d4, False)]
    assert registry.history()[2]["reason"] == "v3 is noisy"


def test_same_recipe_is_registered_once(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    meta = {"recipe_sha256": "ab" * 32}
    ids = []
    for _ in range(2):  # a retry of a training that had already registered its version
        with registry.staging() as staged:
            (staged / "w.bin").write_bytes(b"same")
            ids.append(registry.publish(staged, dt.date(2024, 3, 1), meta))
    assert ids[0] == ids[1] and len(registry.versions()) == 1
    assert not list(registry.versions_dir.glob(".tmp-*"))


def test_truncated_model_json_is_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry(tmp_path / "models")
    d1, d2 = _publish_window(registry, 1), _publish_window(registry, 2)
    (registry.versions_dir / d2 / "model.json").write_text('{"version": "v00')
    assert [w.version for w in registry.windows()] == [d1]
    assert "unreadable model version" in caplog.text


def _rollback_loop(models: str, n: int) -> None:
    from workbench.ml.exceptions import ModelNotFoundError

    registry = ModelRegistry(Path(models))
    for _ in range(n):
        versions = registry.versions()
        with contextlib.suppress(ModelNotFoundError):  # pruned meanwhile: a clear error, nothing else
            registry.set_current(versions[0], actor="racer")  # the oldest: what prune wants to delete


def test_prune_and_rollback_serialise_on_the_registry_lock(tmp_path: Path) -> None:
    import multiprocessing as mp
    import time

    registry = ModelRegistry(tmp_path / "models")
    versions = [_publish_window(registry, day) for day in range(1, 4)]
    registry.advance_current(versions[-1])
    racer = mp.get_context("spawn").Process(target=_rollback_loop, args=(str(registry.models_dir), 300))
    racer.start()
    deadline = time.monotonic() + 60
    while not any(r["actor"] == "racer" for r in registry.history()) and time.monotonic() < deadline:
        time.sleep(0.01)
    removed: list[str] = []
    day = 4
    while racer.is_alive():
        for _ in range(2):
            _publish_window(registry, day % 28 + 1, day)
            day += 1
        removed += registry.prune(1)
        current = registry.current()
        assert current is not None and (registry.versions_dir / current / "model.json").is_file()
    racer.join()
    assert racer.exitcode == 0
    assert len(removed) > 10 and sum(r["actor"] == "racer" for r in registry.history()) > 10
    current = registry.current()  # CURRENT never names a deleted version
    assert current in registry.versions()
    registry.verify(current)


def test_prune_waits_for_a_rollback_holding_the_lock(tmp_path: Path) -> None:
    import threading

    registry = ModelRegistry(tmp_path / "models")
    versions = [_publish_window(registry, day) for day in range(1, 4)]
    registry.advance_current(versions[-1])
    result: list[list[str]] = []
    with registry.locked():  # what set_current holds between its check and its write
        pruner = threading.Thread(target=lambda: result.append(ModelRegistry(registry.models_dir).prune(1)))
        pruner.start()
        pruner.join(0.5)
        assert pruner.is_alive() and not result  # blocked on the lock
        registry.current_path.write_text(versions[0] + "\n")  # the rollback lands while prune waits
    pruner.join()
    assert result == [[versions[1]]]  # prune saw the new CURRENT and kept it
    assert registry.versions() == [versions[0], versions[2]]


def test_a_deleted_versions_sequence_number_is_never_given_again(tmp_path: Path) -> None:
    """A tester deleted v0001-2024-03-04 while the workbench ran; the next training was published as
    v0001-2024-03-05, an id the shards and the lakehouse already held for the deleted one."""
    import shutil

    registry = ModelRegistry(tmp_path / "models")
    first = _publish(registry, 4)
    shutil.rmtree(registry.versions_dir / first)
    second = _publish(registry, 5)
    assert second.startswith("v0002-")
    _publish(registry, 6)  # v0003, then deleted while v0002 stays: the highest left is not the highest given
    shutil.rmtree(registry.versions_dir / registry.versions()[-1])
    assert registry.versions() == [second] and _publish(registry, 7).startswith("v0004-")
    old = ModelRegistry(tmp_path / "older")  # a registry from before SEQUENCE: its history still counts
    made = _publish(old, 4)
    old.set_current(made)
    old.sequence_path.unlink()
    shutil.rmtree(old.versions_dir / made)
    assert old.next_version_id(dt.date(2024, 3, 5)) == "v0002-2024-03-05"


@pytest.mark.parametrize("name", ["../models/versions/{v}", "{v}/.", "./{v}", "{root}/models/versions/{v}", " {v}"])
def test_only_a_version_id_names_a_version(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """`set-current ../../models/versions/v0001-...` was taken: the stream stamped that path on 176k rows and
    664 anomalies, and `prune` then deleted the pinned version (its name compared as text)."""
    from workbench.cli import main
    from workbench.ml.exceptions import ModelNotFoundError

    registry = ModelRegistry(tmp_path / "models")
    version = _publish(registry, 4)
    _publish(registry, 5)
    path_like = name.format(v=version, root=tmp_path)
    with pytest.raises(ModelNotFoundError, match="is not a model version id"):
        registry.set_current(path_like)
    assert registry.pinned() is None and registry.current() is None
    assert main(["--home", str(tmp_path), "models", "set-current", path_like]) == 2
    assert "is not a model version id" in capsys.readouterr().err
    registry.set_current(version)
    assert registry.prune(1) == []  # the pinned version stays
    assert registry.versions() == [version, registry.versions()[-1]]


def test_a_damaged_model_json_is_named_in_every_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`models show` printed a bare JSONDecodeError; a model.json without `rows` made `models list` list
    nothing after its header (KeyError: 'rows')."""
    import json

    from workbench.cli import main

    registry = ModelRegistry(tmp_path / "models")
    truncated, keyless, fine = (_publish(registry, day) for day in (4, 5, 6))
    path = registry.versions_dir / truncated / "model.json"
    path.write_text(path.read_text()[:40])
    meta = json.loads((registry.versions_dir / keyless / "model.json").read_text())
    del meta["rows"]
    (registry.versions_dir / keyless / "model.json").write_text(json.dumps(meta))
    assert main(["--home", str(tmp_path), "models", "show", truncated]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "models", "set-current", truncated]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{truncated:<18} damaged model.json" in out and "missing 'rows'" in out and f"  {fine}" in out
    # notebook 03's metadata table lists it as damaged (one damaged version raised for the whole table)
    from workbench.analysis.detection_summary import model_metadata
    from workbench.config import Settings

    table = model_metadata(Settings(home=tmp_path), [truncated, fine])
    assert table.loc[truncated, "training day"].startswith("damaged model.json")
    assert table.loc[fine, "training day"] == "2024-03-06"


def test_auto_removes_a_pin_even_when_no_version_is_readable(tmp_path: Path) -> None:
    """`set-current auto` refused ("No readable model version") and left PINNED naming a deleted version."""
    import shutil

    from workbench.ml.exceptions import ModelNotFoundError

    registry = ModelRegistry(tmp_path / "models")
    version = _publish(registry, 4)
    registry.set_current(version)
    shutil.rmtree(registry.versions_dir / version)
    with pytest.raises(ModelNotFoundError, match="nothing to select; the pin is removed"):
        registry.set_current("auto")
    assert registry.pinned() is None and registry.history()[-1]["pinned"] is False
