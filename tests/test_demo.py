"""`workbench demo`, the README's main command, end to end on the session broker (small size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workbench._fs import pid_alive
from workbench.config import Settings
from workbench.runtime._demo import run_demo
from workbench.runtime.supervisor import read_state
from workbench.store.lakehouse import AnomalyLakehouse

pytestmark = pytest.mark.slow

SIZE = {"days": 2, "instances": 1, "seed": 7}


def _numbers(result) -> tuple:
    return (result.events, result.scored_events, result.anomalies, result.model_versions,
            result.detector, result.baseline)


def _nothing_left_running(home: Path) -> None:
    state = read_state(home)
    assert state is not None and state["state"] == "stopped"
    assert not pid_alive(state["supervisor_pid"])
    for name, process in state["processes"].items():
        assert process["pid"] is None or not pid_alive(process["pid"]), f"{name} still runs"


def test_demo_scores_every_event_beats_the_baseline_reports_and_leaves_nothing_running(
        kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings.with_overrides(reports_dir=tmp_path / "reports")
    result = run_demo(settings, **SIZE, progress=False)

    assert result.events > 100_000
    assert result.scored_events == result.events  # none unscored, none twice
    assert result.model_versions and result.evaluation_day == result.days[-1]
    assert result.detector["PR-AUC"] > 0.9 > result.baseline["PR-AUC"]
    assert result.detector["F1"] > 2 * result.baseline["F1"]
    with AnomalyLakehouse.from_settings(settings.with_overrides(home=result.home), read_only=True) as lake:
        assert result.anomalies == lake.count() > 0
    index = result.report / "index.html"
    assert index.is_file()
    assert all((result.report / f"{name}.html").is_file() for name in (
        "01_replay_control", "02_anomaly_explorer", "03_model_comparison", "04_stream_analytics"))
    assert "demo home" in result.summary() and str(index) in result.summary()
    _nothing_left_running(result.home)

    # Same seed, same numbers: the demo clears its own home and reuses the generated log.
    again = run_demo(settings, **SIZE, report=False, progress=False)
    assert _numbers(again) == _numbers(result)
    _nothing_left_running(again.home)


def test_demo_cli_refuses_a_bad_size_with_a_clear_message(kafka_settings: Settings) -> None:
    env = {"WORKBENCH_HOME": str(kafka_settings.home), "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--days", "0", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "`days`" in done.stderr and "Got 0" in done.stderr and "Traceback" not in done.stderr


def test_the_summary_says_when_the_evaluated_day_is_the_models_own_training_day() -> None:
    from workbench.runtime._demo import DemoResult

    result = DemoResult(data=Path("log.parquet"), home=Path("home"), events=10, days=["2024-03-04"], scored_events=10,
                        anomalies=1, model_versions=["v0001-2024-03-04"], evaluation_day="2024-03-04",
                        detector={"PR-AUC": 0.9}, baseline={"PR-AUC": 0.1}, seconds={"total": 1.0})
    assert "in-sample: the model was trained on this day" in result.summary()
    result.model_versions, result.evaluation_day = ["v0001-2024-03-04", "v0002-2024-03-05"], "2024-03-06"
    assert "in-sample" not in result.summary() and "detection on 2024-03-06" in result.summary()
