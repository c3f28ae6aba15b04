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
