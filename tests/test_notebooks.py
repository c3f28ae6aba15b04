"""nbval runs all four notebooks against a small generated, offline-populated WORKBENCH_HOME."""

from __future__ import annotations

import json
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
    # Two nbval runs side by side (a kernel each; the notebooks only read the home), each from an
    # empty folder: the notebooks must find their data through WORKBENCH_HOME only.
    runs = []
    for k, group in enumerate((NOTEBOOKS[0::2], NOTEBOOKS[1::2])):
        folder = tmp_path / f"run{k}"
        folder.mkdir()
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
             "--rootdir", str(folder), *map(str, group)],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [run.communicate(timeout=600) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stdout[-4000:] + stderr[-2000:]
        assert "passed" in stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_with_start_and_end_refuses_a_reversed_range(path: Path) -> None:
    """03 parsed start and end one by one: start after end gave "0 of 0 queries flagged" without a word."""
    cells = json.loads(path.read_text())["cells"]
    parameters = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    declared = {line.split(":")[0].strip() for line in parameters.splitlines() if ":" in line}
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    if {"start", "end"} <= declared:
        assert "parse_range(start, end)" in code and "parse_time(" not in code
