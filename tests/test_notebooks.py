"""nbval runs all four notebooks against a small generated, offline-populated WORKBENCH_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notebook_home import cached_home

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def notebook_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home, labelled log): 3 generated days, 2 model versions, shards, window stats, anomalies."""
    return cached_home(tmp_path_factory.getbasetemp())


def test_there_are_four_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_replay_control.ipynb", "02_anomaly_explorer.ipynb",
                                           "03_model_comparison.ipynb", "04_stream_analytics.ipynb"]


def test_nbval_runs_every_notebook(notebook_home: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = notebook_home
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    # Run from an empty folder: the notebooks must find their data through WORKBENCH_HOME only.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
         "--rootdir", str(tmp_path), *map(str, NOTEBOOKS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(NOTEBOOKS)} passed" in result.stdout or "passed" in result.stdout
