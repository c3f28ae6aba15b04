"""The Quix internals the workbench relies on exist with the expected signatures (fails loudly on upgrade)."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import quixstreams

from workbench.config import Settings
from workbench.pipeline._app import build_application
from workbench.pipeline._quix import QuixInternalsError, force_checkpoint, register_periodic


def _app(tmp_path: Path) -> quixstreams.Application:
    settings = Settings(home=tmp_path / "home", kafka_port=1)  # never connected: building is offline
    return build_application(settings, "quix-test")


def test_the_pinned_quix_has_the_internals_with_their_signatures(tmp_path: Path) -> None:
    assert quixstreams.__version__.startswith("3.28."), quixstreams.__version__
    app = _app(tmp_path)
    register = app._dataframe_registry.register_periodic_task
    assert list(inspect.signature(register).parameters) == ["task"]
    commit = app._processing_context.commit_checkpoint
    assert list(inspect.signature(commit).parameters)[:1] == ["force"]
    assert "on_processing_error" in inspect.signature(quixstreams.Application).parameters


def test_the_adapter_registers_and_forces(tmp_path: Path) -> None:
    app = _app(tmp_path)
    calls: list[int] = []
    register_periodic(app, lambda: calls.append(1))
    app._dataframe_registry.run_periodic_tasks()
    assert calls == [1]
    assert callable(force_checkpoint(app))


def test_a_missing_or_changed_internal_raises_instead_of_switching_a_feature_off() -> None:
    with pytest.raises(QuixInternalsError, match="register_periodic_task"):
        register_periodic(SimpleNamespace(), lambda: None)  # type: ignore[arg-type]
    changed = SimpleNamespace(_processing_context=SimpleNamespace(commit_checkpoint=lambda now: None))
    with pytest.raises(QuixInternalsError, match="changed"):
        force_checkpoint(changed)  # type: ignore[arg-type]
