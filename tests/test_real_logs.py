"""Training and evaluation on a real-shaped (unlabelled, prepared) log."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.cli import main
from workbench.config import Settings
from workbench.data import prepare
from workbench.data.generator import generate
from workbench.ml.alert_report import alert_report, has_labels
from workbench.ml.evaluate import deferred_metric_reasons


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated days exported the way real logs come: no labels, doubles, naive ns, upper case."""
    root = tmp_path_factory.mktemp("real")
    generate(root / "gen.parquet", days=3, instances=6, rows_per_day=30_000, seed=2)
    table = pq.read_table(root / "gen.parquet").drop_columns(["label_anomaly", "label_kind"])
    columns = {}
    for field in table.schema:
        column = table.column(field.name)
        if pa.types.is_integer(field.type):
            column = column.cast(pa.float64())
        elif pa.types.is_timestamp(field.type):
            column = column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns"))
        columns[field.name.upper()] = column
    pq.write_table(pa.table(columns), root / "export.parquet")
    out = root / "prepared"
    prepare(root / "export.parquet", out, split="day", temp_dir=root / "tmp")
    return out


def test_train_and_evaluate_work_on_a_prepared_unlabelled_log(prepared: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert not has_labels(prepared)
    home = str(tmp_path / "home")
    assert main(["--home", home, "train", "--day", "2024-03-05", "--window-days", "2", "--data", str(prepared)]) == 0
    trained = capsys.readouterr().out  # the window's rows, and how many were fitted and held out
    assert re.search(r": [\d,]+ rows of the window \([\d,]+ fitted, [\d,]+ held out\) in ", trained), trained
    assert main(["--home", home, "evaluate", "--day", "2024-03-06", "--data", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert "precision and recall need labels" in out and "(no labels)" in out
    report = alert_report(Settings(home=Path(home)), dt.date(2024, 3, 6), data=prepared)
    instance_lines = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert instance_lines == [str(i) for i in report["instances"]] and len(instance_lines) >= 4
    assert report["rows"] == sum(item["rows"] for item in report["instances"].values()) > 0
    assert report["alerts"] == sum(report["reasons"].values())
    assert 0 < report["alerts per 10k"] < 500  # the detector alerts, but not on everything
    assert report["score"]["p50"] <= report["score"]["p99"] <= report["score"]["max"]
    assert main(["--home", home, "evaluate", "--day", "2024-03-06", "--version", "baseline",
                 "--data", str(prepared)]) == 0
    assert "detector baseline" in capsys.readouterr().out


def test_evaluate_decides_labels_on_the_evaluated_day_and_reports_what_the_pipeline_raises(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tester, 40th session: a folder whose first file had no labels was evaluated as unlabelled on its labelled
    days; a labelled log's unlabelled day was scored against no anomalies (every alert false, a PR-AUC of nan
    stored with the version); the unlabelled report left out the deferred step's alerts (412 of the 812 the
    stream raised)."""
    import shutil

    import numpy as np

    from workbench.ml.evaluate import evaluate
    from workbench.ml.exceptions import UnlabelledDay
    from workbench.ml.registry import ModelRegistry

    mixed = tmp_path / "mixed"
    shutil.copytree(prepared, mixed)
    files = sorted(mixed.glob("*.parquet"))
    assert len(files) == 3
    last = pq.read_table(files[-1])  # 2024-03-06 labelled (every row normal), 03-04 and 03-05 not
    pq.write_table(last.append_column("label_anomaly", pa.array(np.zeros(last.num_rows, dtype=bool)))
                   .append_column("label_kind", pa.nulls(last.num_rows, pa.string())), files[-1])
    home = tmp_path / "home"
    assert main(["--home", str(home), "train", "--day", "2024-03-05", "--window-days", "2",
                 "--data", str(mixed)]) == 0
    capsys.readouterr()
    settings = Settings(home=home)
    assert has_labels(mixed)  # any file's labels count, not the first file's
    assert main(["--home", str(home), "evaluate", "--day", "2024-03-06", "--data", str(mixed), "--no-store"]) == 0
    labelled = capsys.readouterr().out
    assert "\nfalse alerts per 10k normal " in labelled and "(no labels)" not in labelled
    # the unlabelled day of the labelled log: its alert report, nothing stored with the version
    assert main(["--home", str(home), "evaluate", "--day", "2024-03-05", "--data", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"'label_anomaly' of '.*mixed' is NULL on all [\d,]+ rows of 2024-03-05", out), out
    assert "(no labels)" in out and "\nPR-AUC " not in out
    registry = ModelRegistry(settings.models_dir)
    assert registry.info(registry.current()).get("evaluations", []) == []
    with pytest.raises(UnlabelledDay, match="2024-03-05: that day carries no labels"):
        evaluate(settings, dt.date(2024, 3, 5), data=mixed, store=False)
    # the report counts what the pipeline raises: the per-query alerts and the deferred step's
    report = alert_report(settings, dt.date(2024, 3, 6), data=mixed)
    metrics = evaluate(settings, dt.date(2024, 3, 6), data=mixed, store=False)["metrics"]
    assert report["alerts"] == metrics["alerts"]
    assert report["of them deferred"] > 0  # the deferred step flags queries of that day
    assert report["of them deferred"] == sum(metrics[name] for name in deferred_metric_reasons())
    assert report["alerts"] == sum(report["reasons"].values())
    assert report["of them deferred"] == sum(item["of them deferred"] for item in report["instances"].values())
