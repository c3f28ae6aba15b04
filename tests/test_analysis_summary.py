"""The notebook-facing helpers: anomaly tables, label agreement, evaluation table, one-call setup."""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.analysis import anomaly_summary as summary
from workbench.analysis import detection_summary as ds
from workbench.config import Settings
from workbench.reports.notebook import UnknownParameterWarning, check_parameters, setup
from workbench.reports.pages import ALL, PAGES, page
from workbench.ui import charts

T = pd.Timestamp("2024-03-04T10:00", tz="UTC")


def _anomalies() -> pd.DataFrame:
    return pd.DataFrame({
        "instance_id": [1, 1, 2, 3, 1],
        "query_id": [10, 11, 20, 30, 10],  # query 10 alerted by two versions
        "model_version": ["v1", "v2", "v2", "v2", "v2"],
        "arrival_timestamp": [T + pd.Timedelta(minutes=m) for m in (0, 5, 7, 9, 0)],
        "reason": ["slow_execution", "slow_execution", "long_queue", "slow_execution", "slow_execution"],
        "true_ms": [5000.0, 900.0, 100.0, 70_000.0, 5000.0],
        "pred_ms": [100.0, 90.0, 50.0, 700.0, 120.0],
        "pred_q_ms": [200.0, 150.0, 80.0, 900.0, 220.0],
        "under_ratio": [50.0, 10.0, 2.0, 100.0, 41.7],
        "excess_ms": [4900.0, 810.0, 50.0, 69_300.0, 4880.0],
        "score": [3.0, 1.0, 0.5, 4.0, 2.9],
        "features": [json.dumps({"bytes_scanned": 12}), None, "", "{}", "{}"],
    })


def test_anomaly_tables_are_sorted_and_complete() -> None:
    a = _anomalies()
    by = summary.by_reason_and_version(a)
    assert by.to_dict("records") == [
        {"reason": "slow_execution", "model_version": "v2", "anomalies": 3},
        {"reason": "long_queue", "model_version": "v2", "anomalies": 1},
        {"reason": "slow_execution", "model_version": "v1", "anomalies": 1}]
    top = summary.top_offenders(a, 2)
    assert top.index.tolist() == [1, 3] and top.loc[1, "anomalies"] == 3
    assert top.loc[3, "excess_hours"] == pytest.approx(round(69_300 / 3.6e6, 2))
    worst = summary.worst_queries(a, 2)
    assert worst["query_id"].tolist() == [30, 10] and worst["under_ratio"].tolist() == [100.0, 50.0]
    assert summary.pick_query(a)["query_id"] == 30
    # a query 20x faster than predicted (an alert on its wait) is no worst runtime, and its instance's ratios read
    # as the worst queries round them, its excess 0.00 h, never -0.00 h (browser tester, 40th session)
    fast = pd.concat([a, a.iloc[[0]].assign(instance_id=86, query_id=86, under_ratio=7.0 / 140.6,
                                             excess_ms=-133.6, reason="queue_longer_than_run")], ignore_index=True)
    assert 86 not in summary.worst_queries(fast, 10)["query_id"].tolist()
    row = summary.top_offenders(fast, 10).loc[86]
    assert (row["median_ratio"], row["worst_ratio"]) == (0.0, 0.0) and str(row["excess_hours"]) == "0.0"
    assert row["main_reason"] == "queue_longer_than_run" and top.loc[1, "main_reason"] == "slow_execution"
    assert summary.top_offenders(fast, 10)["anomalies"].dtype.kind == "i"
    assert summary.pick_query(a, 20)["instance_id"] == 2
    assert summary.pick_query(a, 99) is None and summary.pick_query(a.iloc[:0]) is None
    assert summary.query_features(a.iloc[0]).to_dict() == {"feature": {"bytes_scanned": 12}}
    # No features stored (null, "", "{}"): one row that says so, not a lone "feature" header.
    for row in (a.iloc[1], a.iloc[2], a.iloc[3]):
        assert summary.query_features(row).to_dict() == {"feature": {"evidence": summary.NO_EVIDENCE}}


def test_no_lakehouse_means_no_anomalies_but_other_errors_surface(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    empty = summary.anomalies_or_empty(settings)
    assert empty.empty and list(empty.columns) == list(summary.ANOMALY_COLUMNS)
    assert summary.by_reason_and_version(empty).empty and summary.top_offenders(empty).empty


def test_classification_table_counts_and_shares() -> None:
    stats = pd.DataFrame({"total_queries": [10, 10], "normal_queries": [8, 6], "cpu_bound_queries": [1, 2],
                          "io_bound_queries": [1, 0], "network_bound_queries": [0, 1],
                          "queue_wlm_bound_queries": [0, 1]})
    table = summary.classification_table(stats, 3)
    assert table.loc["total", "queries"] == 20 and table.loc["Normal", "share %"] == 70.0
    assert table.loc["Anomalies", "queries"] == 3 and table.loc["Anomalies", "share %"] == 15.0
    assert summary.classification_table(stats.iloc[:0], 0).empty  # the notebook says why instead of zeros
    assert summary.classification_table(stats.iloc[:0], 2).loc["Anomalies", "queries"] == 2


def _labels(path: Path) -> Path:
    table = pa.table({
        "instance_id": pa.array([1, 1, 2, 3, 3, 1], pa.int32()),
        "query_id": pa.array([10, 11, 20, 30, 31, 12], pa.int64()),
        "arrival_timestamp": pa.array([T + pd.Timedelta(minutes=m) for m in (0, 5, 7, 9, 11, 13)],
                                      pa.timestamp("us", tz="UTC")),
        "label_anomaly": [True, False, True, True, True, False],
        "label_kind": ["slow", None, "queue", "slow", "spill", None],
    })
    pq.write_table(table, path)
    return path


def test_label_agreement_counts_each_query_once(tmp_path: Path) -> None:
    labels = _labels(tmp_path / "log.parquet")
    result = ds.label_agreement(_anomalies(), labels)
    # alerts: 10, 11, 20, 30 (10 twice); labelled: 10, 20, 30, 31 -> 3 hits
    assert result.precision == 0.75 and result.recall == 0.75
    assert result.summary.loc["alerts that are labelled", "value"] == 3
    assert result.per_kind.loc["spill", "recall"] == 0.0 and result.per_kind.loc["slow", "alerted"] == 2
    narrow = ds.label_agreement(_anomalies(), labels, instances=[3])
    assert narrow.recall == 0.5  # 30 found, 31 missed; other instances' labels are not counted
    assert ds.last_log_day(labels).isoformat() == "2024-03-04"


def test_label_agreement_leaves_out_queries_no_model_scored_yet(tmp_path: Path) -> None:
    """02 early in a replay: "no alert in this selection: every labelled anomaly counts as missed", recall 0.0,
    for a span whose events were stored unscored (no model for their day yet)."""
    labels = _labels(tmp_path / "log.parquet")
    scored = pd.DataFrame({"instance_id": [1, 1, 3], "query_id": [10, 11, 30]})
    result = ds.label_agreement(_anomalies(), labels, scored=scored)
    assert result.recall == 1.0  # 10 and 30 alerted; 20 and 31 were never scored, so not missed
    assert result.summary.loc["queries in span", "value"] == 6
    assert result.summary.loc["queries scored", "value"] == 3
    assert result.summary.loc["labelled anomalies not scored yet", "value"] == 2
    assert result.note.startswith("3 of the span's 6 queries are not scored yet")
    nothing = ds.label_agreement(_anomalies().iloc[:0], labels, scored=scored.iloc[:0])
    assert nothing.recall is None and nothing.summary.loc["labelled anomalies", "value"] == 0
    assert ds.label_agreement(_anomalies(), labels).note == ""  # no scored set: every query counts, as before


def test_label_agreement_leaves_out_in_sample_queries_with_their_alerts_and_says_when_nothing_is_scored(
        tmp_path: Path) -> None:
    """02's whole-log precision counted the first day, which the version that scored it was trained on;
    before any model it read "labelled anomalies 0" under a note about labelled anomalies not scored."""
    labels = _labels(tmp_path / "log.parquet")
    # alerts on 10, 11, 20, 30; 10 and 11 were scored in-sample (11 is a false alert, 10 a hit)
    scored = pd.DataFrame({"instance_id": [1, 1, 2, 3, 3, 1], "query_id": [10, 11, 20, 30, 31, 12],
                           "in_sample": [True, True, False, False, False, False]})
    result = ds.label_agreement(_anomalies(), labels, scored=scored)
    assert result.summary.loc["alerts", "value"] == 2 and result.precision == 1.0  # 20 and 30
    assert result.recall == round(2 / 3, 3)  # 20 and 30 of 20, 30, 31
    assert result.summary.loc["queries left out as in-sample", "value"] == 2
    assert "2 queries scored by a version trained on their own day" in result.note
    every = ds.label_agreement(_anomalies(), labels, scored=scored.assign(in_sample=False))
    assert every.precision == 0.75 and "in-sample" not in every.note
    nothing = ds.label_agreement(_anomalies().iloc[:0], labels, scored=scored.iloc[:0])
    assert nothing.note.startswith("none of the span's 6 queries is scored yet") and nothing.precision is None


def test_scored_queries_mark_the_days_their_version_was_trained_on(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.notebook_home import cached_home
    from workbench.ml.registry import ModelRegistry

    home, _ = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    scored = summary.scored_queries(settings)
    registry = ModelRegistry(settings.models_dir)
    windows = {v: set(registry.info(v)["window_days"]) for v in registry.versions()}
    assert len(scored) and scored["in_sample"].dtype == bool
    from workbench.store.shards import read_shards

    rows = read_shards(settings.shards_dir, None, ["query_id", "instance_id", "arrival_timestamp", "model_version"])
    frame = rows.to_pandas().dropna(subset=["model_version"])
    expected = [t.strftime("%Y-%m-%d") in windows.get(v, set())
                for t, v in zip(frame["arrival_timestamp"], frame["model_version"], strict=True)]
    assert sum(expected) == int(scored["in_sample"].sum()), (sum(expected), windows)
    assert 0 < sum(expected) < len(scored)


def test_scored_queries_are_the_shard_rows_a_model_version_scored(tmp_path: Path) -> None:
    from tests.helpers import store_generated_days
    from workbench.store.shards import read_shards, write_shard

    settings = Settings(home=tmp_path / "home")
    assert summary.scored_queries(settings).empty  # no shards yet
    store_generated_days(settings, days=2, start=dt.date(2024, 3, 4), rows_per_day=300)
    assert summary.scored_queries(settings).empty  # stored unscored
    day = read_shards(settings.shards_dir, ["2024-03-05"])
    day = day.set_column(day.schema.get_field_index("model_version"), "model_version",
                         pa.array(["v0001-2024-03-04"] * day.num_rows, pa.string()))
    write_shard(settings.shards_dir, "2024-03-05", 0, int(day.column("kafka_offset")[0].as_py()), day)
    scored = summary.scored_queries(settings)
    assert not scored["in_sample"].any()  # a version the registry does not hold: its window is unknown
    assert sorted(map(tuple, scored[["instance_id", "query_id"]].to_numpy().tolist())) == sorted(
        zip(day.column("instance_id").to_pylist(), day.column("query_id").to_pylist(), strict=True))
    noon = dt.datetime(2024, 3, 5, 12, tzinfo=dt.UTC)
    assert len(summary.scored_queries(settings, start=noon)) < len(scored)
    assert summary.scored_queries(settings, end=dt.datetime(2024, 3, 5, tzinfo=dt.UTC)).empty


def test_label_agreement_takes_labels_of_another_tool_without_kinds_or_as_text(tmp_path: Path) -> None:
    table = pq.read_table(_labels(tmp_path / "log.parquet"))
    flags = table.column("label_anomaly").to_pylist()
    other = table.drop_columns(["label_kind"]).set_column(
        3, "label_anomaly", pa.array(["yes" if f else "no" for f in flags]))
    pq.write_table(other, tmp_path / "other.parquet")
    result = ds.label_agreement(_anomalies(), tmp_path / "other.parquet")
    assert result.precision == 0.75 and result.recall == 0.75
    assert result.per_kind.loc["unnamed", "labelled"] == 4 and result.per_kind.loc["unnamed", "alerted"] == 3


def test_label_agreement_reads_int96_and_naive_times_as_every_reader_of_a_log_does(tmp_path: Path) -> None:
    """The labels file was read with pq.read_table: INT96 times in nanoseconds, so a year beyond 2262 wrapped
    around (2500 read as 1915) and fell out of the span; a naive time (Redset's files) stopped the span filter
    with "Invalid comparison between dtype=datetime64[us] and datetime"."""
    table = pq.read_table(_labels(tmp_path / "log.parquet"))
    times = [t.replace(year=2500) for t in table.column("arrival_timestamp").to_pylist()]
    far = table.set_column(2, "arrival_timestamp", pa.array(times, pa.timestamp("us", tz="UTC")))
    pq.write_table(far, tmp_path / "int96.parquet", use_deprecated_int96_timestamps=True)
    start = T.to_pydatetime().replace(year=2500)
    result = ds.label_agreement(_anomalies(), tmp_path / "int96.parquet", start=start,
                                end=start + dt.timedelta(hours=1))
    assert result.summary.loc["queries in span", "value"] == 6 and result.recall == 0.75
    assert ds.log_days(tmp_path / "int96.parquet") == [dt.date(2500, 3, 4)]
    naive = table.set_column(2, "arrival_timestamp", table.column("arrival_timestamp").cast(pa.timestamp("us")))
    pq.write_table(naive, tmp_path / "naive.parquet")
    result = ds.label_agreement(_anomalies(), tmp_path / "naive.parquet", start=T.to_pydatetime(),
                                end=T.to_pydatetime() + dt.timedelta(minutes=10))
    assert result.summary.loc["queries in span", "value"] == 4 and result.recall == 1.0


def test_label_agreement_takes_each_rows_kind_from_the_evaluations_rule(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One owner of "a labelled row without a kind is unnamed": workbench.ml.evaluate.anomaly_kinds."""
    from workbench.ml import evaluate

    table = pq.read_table(_labels(tmp_path / "log.parquet"))
    kinds = table.column("label_kind").to_pylist()
    kinds[kinds.index(None)] = "stray"  # a kind on a normal row stays out of the per-kind table
    labelled = [i for i, f in enumerate(table.column("label_anomaly").to_pylist()) if f]
    kinds[labelled[0]] = None  # a labelled row without a kind: unnamed
    pq.write_table(table.set_column(4, "label_kind", pa.array(kinds, pa.string())), tmp_path / "mixed.parquet")
    result = ds.label_agreement(_anomalies(), tmp_path / "mixed.parquet")
    assert result.per_kind.loc["unnamed", "labelled"] == 1 and "stray" not in result.per_kind.index
    assert result.per_kind["labelled"].sum() == len(labelled)
    calls: list[int] = []

    def owner(table: pa.Table, labels: np.ndarray) -> np.ndarray:
        calls.append(table.num_rows)
        return np.where(labels, "kind from the owner", None).astype(object)

    monkeypatch.setattr(evaluate, "anomaly_kinds", owner)
    result = ds.label_agreement(_anomalies(), tmp_path / "mixed.parquet")
    assert calls == [table.num_rows] and list(result.per_kind.index) == ["kind from the owner"]


def test_an_evaluation_day_outside_the_log_is_skipped_with_the_logs_days(tmp_path: Path) -> None:
    labels = _labels(tmp_path / "log.parquet")  # 2024-03-04 only
    assert ds.evaluation_day(labels, "") == (dt.date(2024, 3, 4), "evaluation day: 2024-03-04 (the log's last day)")
    assert ds.evaluation_day(labels, " 2024-03-04 ")[0] == dt.date(2024, 3, 4)
    day, why = ds.evaluation_day(labels, "2030-01-01")
    assert day is None and "2030-01-01 has no rows" in why and "covers 2024-03-04" in why and str(labels) in why
    day, why = ds.evaluation_day(labels, "31/12")
    assert day is None and "'31/12' is not a date" in why


def test_log_days_counts_a_zoned_log_by_its_utc_day(tmp_path: Path) -> None:
    utc = pa.array([pd.Timestamp("2024-03-04 23:30", tz="UTC"), pd.Timestamp("2024-03-06 01:00", tz="UTC")],
                   pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"arrival_timestamp": utc.cast(pa.timestamp("us", tz="Asia/Tokyo"))}),
                   tmp_path / "zoned.parquet")
    assert ds.log_days(tmp_path / "zoned.parquet") == [dt.date(2024, 3, 4), dt.date(2024, 3, 6)]


def test_evaluation_table_orders_rows_and_adds_recall_per_kind() -> None:
    table = ds.evaluation_table({"v1": {"rows": 100, "F1": 0.51234, "recall[slow]": 0.5},
                                 "baseline": {"rows": 100, "F1": 0.2}})
    assert list(table.index) == ["v1", "baseline"]
    assert list(table.columns)[:3] == ["rows", "anomalies", "alerts"] and table.columns[-1] == "recall[slow]"
    assert table.loc["v1", "F1"] == 0.5123 and np.isnan(table.loc["baseline", "recall[slow]"])
    assert str(table["rows"].dtype) == "Int64" and "100.0" not in table.to_string()  # counts read 100, not 100.0


def test_the_evaluation_says_when_the_lakehouse_lacks_the_days_persistent_runs(tmp_path: Path) -> None:
    """Notebook 03 counted 114 alerts on a log's last day where the lakehouse held 113: the day's
    persistent run is stored only once the day is settled (now also when the replay finished the log)."""
    from workbench.store.window_stats import WindowStatsStore

    settings = Settings(home=tmp_path)
    day = dt.date(2024, 3, 7)
    results = {"v2": {"alerts": 114.0, "persistent runs": 1.0}, "baseline": {"alerts": 90.0}}
    note = ds.deferred_alerts_note(settings, day, results)
    assert "2024-03-07's persistent and creeping runs, slower groups' queries and moved statements' runs (v2 1)" \
        in note and "lakehouse holds fewer" in note
    assert ds.deferred_alerts_note(settings, day, {"v2": {"alerts": 113.0, "persistent runs": 0.0}}) == ""
    every = {"v2": {"alerts": 140.0, "persistent runs": 1.0, "slower group queries": 26.0, "creeping runs": 3.0,
                    "moved statement runs": 9.0}}
    assert "runs (v2 39)" in ds.deferred_alerts_note(settings, day, every)
    assert ds.deferred_alerts_note(settings, None, results) == ""
    with WindowStatsStore.from_settings(settings) as store:  # the scoring app judged the day
        store.insert_residuals(pd.DataFrame({"instance_id": [1], "window_start": [pd.Timestamp("2024-03-07T23:50Z")],
                                             "residual_queries": [20], "median_log_residual": [0.1]}))
    assert ds.deferred_alerts_note(settings, day, results) == ""
    assert ds.deferred_alerts_note(settings, day + dt.timedelta(days=1), results) != ""


def test_runtime_chart_has_nonzero_bars_and_readable_log_ticks() -> None:
    chart = charts.runtime_comparison_chart({"actual": 5000.0, "predicted mean": 100.0, "predicted q90": 0.2,
                                             "typical for fingerprint": None})
    spec = chart.to_dict(validate=True)
    enc = spec["encoding"]
    assert enc["x"]["scale"] == {"type": "log", "domain": [0.1, 10_000.0]}
    assert enc["x"]["axis"]["values"] == pytest.approx([0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0])
    assert enc["x2"]["field"] == "shown"  # bars span base..value: never zero width on a log axis
    rows = next(iter(spec["datasets"].values()))
    assert [r["what"] for r in rows] == ["actual", "predicted mean", "predicted q90"]
    assert all(r["shown"] > r["base"] for r in rows)  # 0.2 ms is shown as 1 ms, still a bar
    svg = charts.to_svg(chart)
    assert "1,000 ms" in svg and "0.1 ms" in svg and "e+" not in svg
    assert "No runtimes" in charts.to_svg(charts.runtime_comparison_chart({"actual": None}))


def test_problem_badges_use_the_class_colours() -> None:
    html = charts.problem_badges_html(["cpu_bound", "queue_wlm_bound"])
    assert charts.CLASS_COLORS["CPU"] in html and charts.CLASS_COLORS["Queue/WLM"] in html
    assert "no critical problem type" in charts.problem_badges_html([])


def test_setup_warns_about_undeclared_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    namespace = {"__annotations__": {"start": str}, "start": "", "instance": "1", "pd": pd, "In": [],
                 "_before": set()}
    with pytest.warns(UnknownParameterWarning, match=r"\['instance'\]"):
        settings = setup(namespace)
    assert settings.home == tmp_path / "home"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_parameters({"__annotations__": {"start": str}, "start": "x", "json": json}) == []
        # a parameters cell written without types declares nothing: its names are not "unknown" (a browser
        # tester's `start = "yesterday"` read "Unknown notebook parameter(s) [...]. This notebook accepts []")
        assert check_parameters({"start": "yesterday", "top_n": 5}) == []


def test_a_warning_for_a_cells_call_reads_as_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 03's report page showed `/tmp/ipykernel_3113/288801447.py:11: UserWarning: Unknown model ...`."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    setup({"__annotations__": {}})
    cell = warnings.formatwarning("Unknown model versions v9 ignored", UserWarning, "/tmp/ipykernel_31/28.py", 11)
    assert cell == "warning: Unknown model versions v9 ignored\n"
    library = warnings.formatwarning("old API", FutureWarning, "/usr/lib/python3/site-packages/x.py", 3)
    assert "x.py:3: FutureWarning: old API" in library  # everything else as Python writes it


def test_a_rerun_in_the_same_kernel_does_not_take_the_notebooks_own_variables_for_parameters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    namespace: dict = {"__annotations__": {"mode": str}, "mode": "attach"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(namespace)
        namespace.update(started=False, ids=None, results={})  # what the notebook's cells assign
        setup(namespace)  # Run All again: the same globals
    # A misspelling papermill injected into a fresh kernel is still reported.
    with pytest.warns(UnknownParameterWarning, match=r"\['speed'\]"):
        setup({"__annotations__": {"mode": str}, "mode": "attach", "speed": 60.0})


def test_in_a_notebook_a_parameter_error_shows_its_message_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A reversed range (any ConfigurationError) is the user's to fix: one line, not a stack of package frames."""
    from IPython.core.interactiveshell import InteractiveShell

    from workbench.exceptions import ConfigurationError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    try:
        capsys.readouterr()
        result = shell.run_cell("from workbench.reports.notebook import parse_range, setup\n"
                                "settings = setup(globals())\nparse_range('2024-03-06', '2024-03-05')")
        assert result.error_in_exec is not None
        out = capsys.readouterr().out
        assert isinstance(result.error_in_exec, ConfigurationError)
        assert "ConfigurationError: The `start` parameter (2024-03-06 00:00 UTC) must be before `end`" in out
        assert "Traceback" not in out and "notebook.py" not in out
        assert shell.run_cell("settings = setup(globals())").success  # the setup cell again: cells run again
        # Any error the workbench explains itself: attach with nothing running (or wb.status() with
        # the broker down, a ReplayError) showed a stack of package frames above its one line.
        result = shell.run_cell("from workbench.runtime import Workbench\nWorkbench.attach(settings)")
        out = capsys.readouterr().out
        assert type(result.error_in_exec).__name__ == "WorkbenchStateError"
        assert "WorkbenchStateError: No workbench runs under" in out and "Traceback" not in out, out
        result = shell.run_cell("1 / 0")  # any other error keeps its traceback
        assert isinstance(result.error_in_exec, ZeroDivisionError) and "Traceback" in capsys.readouterr().out
    finally:
        InteractiveShell.clear_instance()


def test_a_reversed_time_range_is_refused_with_both_ends_named() -> None:
    from datetime import UTC, datetime

    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import parse_range

    assert parse_range("2024-03-04", "2024-03-05T12:00") == (datetime(2024, 3, 4, tzinfo=UTC),
                                                            datetime(2024, 3, 5, 12, tzinfo=UTC))
    assert parse_range("", "2024-03-05") == (None, datetime(2024, 3, 5, tzinfo=UTC))
    with pytest.raises(ConfigurationError, match=r"\(2024-03-06 00:00 UTC\) must be before `end` \(2024-03-05 00:00"):
        parse_range("2024-03-06", "2024-03-05")
    with pytest.raises(ConfigurationError, match="must be before"):
        parse_range("2024-03-05", "2024-03-05")


def test_page_registry_is_the_notebook_folder() -> None:
    root = Path(__file__).resolve().parents[1] / "notebooks"
    assert [p.stem for p in sorted(root.glob("*.ipynb"))] == list(ALL) == [p.name for p in PAGES]
    assert page("02_anomaly_explorer").title == "Anomaly explorer"
    assert page("05_new_page").title == "New page"


def test_versions_side_by_side_counts_each_version_and_the_shared_queries() -> None:
    t = pd.Timestamp("2024-03-06T10:00", tz="UTC")
    frame = pd.DataFrame({
        "instance_id": [1, 1, 1, 2, 2],
        "query_id": [10, 10, 11, 20, 21],
        "model_version": ["v1", "v2", "v2", "v1", "v1"],
        "arrival_timestamp": [t, t, t, t + pd.Timedelta(days=1), t + pd.Timedelta(days=1)],
    })
    table = summary.versions_side_by_side(frame, ["v1", "v2", "v3"])
    records = table.to_dict("records")
    assert records[0] == {"day": "2024-03-06", "v1": 1, "v2": 2, "v3": 0, "flagged by all": 1}
    # a day only v1 flagged compares nothing: no "0 flagged by all", no v1-only count (browser tester, 40th)
    assert records[1]["v1"] == 2 and records[1]["v2"] == 0 and pd.isna(records[1]["flagged by all"])
    assert "v3" not in summary.versions_side_by_side(frame).columns
    assert list(summary.versions_side_by_side(frame.iloc[0:0]).columns) == ["day"]


def test_window_anomalies_or_empty_reads_the_lakehouse_strongest_first(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from workbench.analysis.collective import WINDOW_ANOMALY_SCHEMA
    from workbench.store.lakehouse import AnomalyLakehouse

    settings = Settings(home=tmp_path / "home")
    empty = summary.window_anomalies_or_empty(settings)
    assert empty.empty and tuple(empty.columns) == summary.WINDOW_ANOMALY_COLUMNS
    t = datetime(2024, 3, 6, 10, 0, tzinfo=UTC)
    rows = pa.Table.from_pylist([
        {"instance_id": 3, "window_start": t, "signal": "queue_share", "expected": 0.02, "observed": 0.5,
         "score": 7.5, "reason": "queue storm"},
        {"instance_id": 4, "window_start": t, "signal": "arrivals", "expected": 40.0, "observed": 400.0,
         "score": 12.0, "reason": "arrival surge"},
    ], schema=WINDOW_ANOMALY_SCHEMA)
    with AnomalyLakehouse.from_settings(settings) as lake:
        assert lake.write_window_anomalies(rows) == 2
    frame = summary.window_anomalies_or_empty(settings)
    assert list(frame["instance_id"]) == [4, 3] and list(frame["signal"]) == ["arrivals", "queue_share"]
    assert list(summary.window_anomalies_or_empty(settings, instances=[3])["instance_id"]) == [3]


@pytest.mark.parametrize(("declared", "value", "wanted"), [
    (int, "ten", "a whole number"), (int, 2.5, "a whole number"), (int, True, "a whole number"),
    (float, "fast", "a number"), (bool, "yes", "True or False"), (int | None, "1", "a whole number such as 10 or None"),
])
def test_a_number_or_flag_parameter_of_the_wrong_type_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: type, value: object, wanted: str) -> None:
    """top_n = "ten" in notebook 02 failed inside pandas ("cannot do positional indexing ... [ten]")."""
    from workbench.exceptions import ConfigurationError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    expected = rf"The `top_n` parameter must be {wanted}.*\. Got {re.escape(repr(value))} instead"
    with pytest.raises(ConfigurationError, match=expected):
        setup({"__annotations__": {"top_n": declared, "start": str}, "top_n": value, "start": ""})


def test_parameters_of_their_declared_types_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    setup({"__annotations__": {"top_n": int, "speedup": float, "steer": bool, "pack": int | None, "instances": str},
           "top_n": 3, "speedup": 600, "steer": False, "pack": None, "instances": [1, 2]})


@pytest.mark.parametrize(("name", "value"), [("start", 20240305), ("day", 20240306), ("reason", 5),
                                             ("versions", 2), ("data", 5), ("end", 1.5), ("mode", True)])
def test_a_number_in_a_text_parameter_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             name: str, value: object) -> None:
    """`start = 20240305` (no quotes) ended in "'int' object has no attribute 'strip'" tracebacks in all four
    notebooks (a browser tester's finding)."""
    from workbench.exceptions import ConfigurationError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    expected = rf"^The `{name}` parameter must be text in quotes, such as {name} = \"{value}\"\. Got {value!r} "
    with pytest.raises(ConfigurationError, match=expected):
        setup({"__annotations__": {name: str}, name: value})


def test_text_parameters_take_what_their_parsers_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    setup({"__annotations__": {"instances": str, "versions": str, "start": str, "speedup": float | str},
           "instances": 18, "versions": ["v0001"], "start": datetime(2024, 3, 5, tzinfo=UTC), "speedup": "max"})

@pytest.mark.parametrize("value", [-3, 0])
def test_a_top_n_that_shows_no_rows_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         value: int) -> None:
    """top_n = -3 passed the type check and head(-3) silently dropped the last 3 rows; 0 showed none."""
    from workbench.exceptions import ConfigurationError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    namespace = {"__annotations__": {"top_n": int}, "top_n": value}
    expected = rf"^The `top_n` parameter must be at least 1 .*\. Got {value} instead\.$"
    with pytest.raises(ConfigurationError, match=expected):
        setup(namespace)
    with pytest.raises(ConfigurationError, match="`top_n`"):
        setup(namespace)  # edited in the browser and re-run: checked again
    assert setup({"__annotations__": {"top_n": int}, "top_n": 1}) is not None


def test_an_unknown_critical_mode_is_refused_in_the_first_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """04 with critical_mode="bogus" drew its charts and stopped halfway down, where the mode was read."""
    from workbench.exceptions import ConfigurationError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    declared = {"critical_mode": str}
    with pytest.raises(ConfigurationError, match=r"The `critical_mode` parameter must be 'all' or 'any'\. Got 'bogus'"):
        setup({"__annotations__": declared, "critical_mode": "bogus"})
    setup({"__annotations__": declared, "critical_mode": "any"})


def test_a_range_is_checked_on_declared_parameters_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # on a re-run, a notebook's own variable of that name (no parameter there) is none of setup's business
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    setup({"__annotations__": {"start": str}, "start": "", "top_n": -1, "_workbench_parameters_checked": True})


def test_a_re_run_with_a_refused_selection_leaves_no_result_of_the_last_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 02 re-run with start after end: the cells below showed the previous selection's figures."""
    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import parse_range

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    ns: dict = {"__annotations__": {"start": str, "end": str}, "start": "", "end": "", "In": [], "pd": object()}
    ns["settings"] = setup(ns, clear=True)
    ns["t0"], ns["anomalies"], ns["_"] = parse_range(ns["start"], ns["end"]), "the first run's anomalies", 1
    ns.update(start="2024-03-06", end="2024-03-05")  # the parameters cell edited
    ns["settings"] = setup(ns, clear=True)
    assert "anomalies" not in ns and "t0" not in ns  # a refused range below cannot show the last run's
    assert {"start", "end", "pd", "In", "_", "settings"} <= set(ns)  # parameters, imports, IPython's own stay
    import pandas as pd

    assert pd.get_option("display.max_colwidth") == 500  # a window's reason is read whole
    with pytest.raises(ConfigurationError, match="start"):
        parse_range(ns["start"], ns["end"])
    ns["later"] = 1
    setup(ns)  # without clear (the replay notebook keeps its workbench handle): nothing removed
    assert "later" in ns


def test_labels_path_to_a_file_that_is_no_labelled_parquet_log_is_refused_naming_it(tmp_path: Path) -> None:
    """labels_path="/etc/passwd" ended in pyarrow's ArrowInvalid after a 10-frame traceback."""
    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import find_labelled_log

    settings = Settings(home=tmp_path / "home")
    text = tmp_path / "notes.txt"
    text.write_text("not parquet")
    with pytest.raises(ConfigurationError,
                       match=r"`labels_path` parameter must name a Parquet log\. Got '.*notes\.txt', which is not one"):
        find_labelled_log(settings, str(text))
    unlabelled = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"query_id": [1]}), unlabelled)
    with pytest.raises(ConfigurationError, match=r"must name a labelled log .* Got '.*plain\.parquet', which has none"):
        find_labelled_log(settings, str(unlabelled))
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"query_id": [1], "label_anomaly": [False]}), labelled)
    assert find_labelled_log(settings, str(labelled)) == labelled
    blank = tmp_path / "blank.parquet"
    pq.write_table(pa.table({"query_id": [1, 2], "label_anomaly": pa.nulls(2, pa.bool_())}), blank)
    with pytest.raises(ConfigurationError, match=r"Got '.*blank\.parquet', whose `label_anomaly` is NULL on every row"):
        find_labelled_log(settings, str(blank))
    # found by itself: a log nobody labelled is passed over for a labelled one
    settings.data_dir.mkdir(parents=True)
    pq.write_table(pa.table({"query_id": [1], "label_anomaly": [True]}), settings.data_dir / "a.parquet")
    nobody = pa.table({"query_id": [1], "label_anomaly": pa.nulls(1, pa.bool_())})
    pq.write_table(nobody, settings.data_dir / "b.parquet")
    assert find_labelled_log(settings) == settings.data_dir / "a.parquet"
    # the log the home was replayed from comes first (tester B, 33rd session: a log outside the home gave
    # no detection table); one without labels is passed over as well
    import json

    from workbench.runtime._home import LOG_RECORD

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    (settings.state_dir / LOG_RECORD).write_text(json.dumps({"path": str(labelled)}))
    assert find_labelled_log(settings) == labelled
    (settings.state_dir / LOG_RECORD).write_text(json.dumps({"path": str(blank)}))
    assert find_labelled_log(settings) == settings.data_dir / "a.parquet"


def test_start_mode_with_a_missing_data_file_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import open_workbench

    settings = Settings(home=tmp_path / "home")
    with pytest.raises(ConfigurationError,
                       match=r"The `data` parameter must name a Parquet log .* Got '/nope\.parquet'"):
        open_workbench("start", settings, data="/nope.parquet")
    # a first start with no log at all says how to get one (it named the folder only)
    with pytest.raises(ConfigurationError, match=r"none given and none in .*`workbench generate` .* writes a labelled"):
        open_workbench("start", settings)


def test_an_unknown_critical_mode_is_a_parameter_error_naming_critical_mode(tmp_path: Path) -> None:
    from workbench.analysis import read
    from workbench.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"`critical_mode` .* must be 'all' or 'any'\. Got 'some'"):
        read.critical_instances(Settings(home=tmp_path / "home"), "24h", mode="some")


def test_an_empty_anomaly_selection_names_the_filters_and_what_the_lakehouse_holds(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Notebook 02 with a version that never scored or a misspelt reason printed "0 anomalies,
    0 instances, 0 model versions", as if nothing had been detected."""
    from tests.notebook_home import cached_home

    home, _ = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    every = summary.anomalies_or_empty(settings)
    line = summary.describe_anomalies(settings, every)
    assert line.startswith(f"{len(every):,} anomalies, ") and " 1 model version" in line  # not "1 model versions"
    wanted = summary.anomalies_or_empty(settings, reason="slow", versions=["v0009"])
    line = summary.describe_anomalies(settings, wanted, reason="slow", versions=["v0009"])
    assert line.startswith("no anomalies match the filters (reason 'slow'; versions v0009): the lakehouse holds "
                           f"{len(every):,} anomalies")
    assert "slow_execution" in line and "v0002-2024-03-05" in line and "2024-03-0" in line
    assert summary.describe_anomalies(Settings(home=tmp_path / "empty"), every.iloc[:0]).startswith("no anomalies yet")


def test_versions_that_are_all_unknown_are_a_parameter_error(tmp_path: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """Notebook 03 with versions="v0009" warned, then said "no labelled log or no model: evaluation skipped"."""
    from tests.notebook_home import cached_home
    from workbench.exceptions import ConfigurationError

    home, _ = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    expected = (r"`versions` parameter names no registered model version: v0009\. "
                r"Registered: v0001-2024-03-04, v0002-2024-03-05\.")  # text, not Python lists
    with pytest.raises(ConfigurationError, match=expected):
        ds.choose_versions(settings, ["v0009"])
    with pytest.warns(UserWarning, match=r"versions v0009 ignored"):
        assert ds.choose_versions(settings, ["v0009", "v0002-2024-03-05"]) == ["v0002-2024-03-05"]
    assert ds.choose_versions(settings) == ["v0001-2024-03-04", "v0002-2024-03-05"]
    # A version named twice is compared once (it was listed twice in 03's metadata table).
    from workbench.reports.notebook import parse_instances, parse_list

    twice = parse_list("v0002-2024-03-05, v0001-2024-03-04,v0002-2024-03-05")
    assert ds.choose_versions(settings, twice) == ["v0002-2024-03-05", "v0001-2024-03-04"]
    assert parse_instances("3, 1,3") == [3, 1] and parse_list(["a", " a", "b"]) == ["a", "b"]
    with pytest.raises(ConfigurationError, match="Registered: none yet"):
        ds.choose_versions(Settings(home=tmp_path / "empty"), ["v0001"])


def test_versions_that_never_scored_are_named_not_counted_as_zero_silently(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Notebook 04 with versions="v0009" counted 0 anomalies without a word."""
    from tests.notebook_home import cached_home

    home, _ = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    scored = sorted(set(summary.anomalies_or_empty(settings)["model_version"]))
    assert summary.describe_versions(settings, []) == ""
    assert summary.describe_versions(settings, scored) == ""
    line = summary.describe_versions(settings, [scored[0], "v0009"])
    assert line.startswith("versions v0009 never scored an anomaly here, so they count 0: the lakehouse holds "
                           "anomalies of model versions ") and line.endswith(", ".join(scored))
    assert "none yet" in summary.describe_versions(Settings(home=tmp_path / "empty"), ["v0009"])


def test_the_analysed_span_of_a_home_that_streamed_nothing_keeps_the_given_ends(tmp_path: Path) -> None:
    """Notebook 02 on a fresh home with a generated (labelled) log and nothing replayed: its label
    comparison asked the window stats for the streamed span and raised StoreNotFoundError."""
    fresh = Settings(home=tmp_path / "fresh")
    assert summary.analysed_span(fresh, None, None) == (None, None)
    assert summary.analysed_span(fresh, T, None, [1]) == (T, None)
    labels = _labels(tmp_path / "log.parquet")
    result = ds.label_agreement(summary.anomalies_or_empty(fresh), labels, start=T, end=None)
    assert result.summary.loc["alerts", "value"] == 0 and result.precision is None


def test_a_skipped_model_comparison_names_what_is_missing(tmp_path: Path) -> None:
    """Notebook 03 said "no labelled log or no model" with a labelled log right there and no model yet."""
    from workbench.analysis.detection_summary import evaluation_skipped

    log = tmp_path / "labelled.parquet"
    assert evaluation_skipped(log, ["v0001-2024-03-04"]) is None
    assert evaluation_skipped(log, []).startswith("no model version yet")
    assert evaluation_skipped(None, ["v0001-2024-03-04"]).startswith("no labelled log:")
    assert evaluation_skipped(None, []).startswith("no labelled log and no model version yet")


def test_the_label_comparison_says_when_a_filter_narrows_the_alerts_it_counts() -> None:
    """Notebook 02 with a reason that matched no alert showed recall 0.0 for every kind, like a detector
    that missed everything."""
    from workbench.analysis.anomaly_summary import agreement_scope

    some = pd.DataFrame({"query_id": [1, 2]})
    assert agreement_scope(some) is None
    assert "only the alerts of reason 'spill_exceeds_scan'" in agreement_scope(some, reason="spill_exceeds_scan")
    assert "versions v0002-2024-03-05" in agreement_scope(some, versions=["v0002-2024-03-05"])
    none = agreement_scope(some.iloc[:0], reason="nope")
    assert none.startswith("no alert in this selection (reason 'nope')") and "counts as missed" in none
    # an instance not in the log: no alert and nothing labelled, so nothing counts as missed
    empty = agreement_scope(some.iloc[:0], labelled=0)
    assert empty == "no alert and no labelled anomaly among the scored queries of this selection: nothing to compare"


def test_an_empty_table_is_shown_as_the_reason_it_is_empty() -> None:
    """02 and 03 early in a replay showed tables of headers only, and 03's metadata a bare dash."""
    from IPython.display import Markdown

    from workbench.reports.notebook import table_or_note

    frame = pd.DataFrame({"a": [1]})
    assert table_or_note(frame, "why") is frame
    note = table_or_note(frame.iloc[:0], "no model version yet")
    assert isinstance(note, Markdown) and note.data == "*no model version yet*"
    assert isinstance(table_or_note(pd.DataFrame(), "x"), Markdown)


def test_no_comparison_names_its_cause() -> None:
    """03 said "fewer than two versions with labelled data" also with two versions and the evaluation
    skipped (a day outside the log), and with one version named in `versions`."""
    two = ["v0001-2024-03-04", "v0002-2024-03-05"]
    assert ds.comparison_skipped(two, None) == "no evaluation (see above): nothing to compare"
    one = ds.comparison_skipped(["v0002-2024-03-05"], None)
    assert one.startswith("fewer than two model versions to compare (only v0002-2024-03-05)")
    assert "(none)" in ds.comparison_skipped([], None)


def test_the_replay_notebooks_last_cell_stops_only_what_it_started_and_says_so_truthfully() -> None:
    """With stop=True on an attached workbench the cell said "still running (set stop=True ...)"."""
    from workbench.reports.notebook import stop_if_asked

    class Stoppable:  # records stop() (the workbench and the panel); a real stop is test_runtime's
        def __init__(self) -> None:
            self.stopped = False

        def stop(self) -> None:
            self.stopped = True

    wb, panel = Stoppable(), Stoppable()
    said = stop_if_asked(wb, started=False, stop=True, panel=panel)
    assert said.startswith("not stopped: this kernel attached to a workbench it did not start (or started it before")
    assert "set stop=True" not in said and not wb.stopped and not panel.stopped
    assert "not started by this kernel" in stop_if_asked(wb, started=False, stop=False, panel=panel)
    assert "set stop=True" in stop_if_asked(wb, started=True, stop=False, panel=panel) and not wb.stopped
    assert stop_if_asked(None, started=False, stop=True) == "no workbench: nothing to stop"
    assert stop_if_asked(wb, started=True, stop=True, panel=panel) == "stopped" and wb.stopped and panel.stopped


def test_instance_ids_beyond_64_bits_and_a_folder_as_labels_path_are_parameter_errors(tmp_path: Path) -> None:
    """instances="99999999999999999999" ended in a DuckDB ConversionException traceback in 02's first
    cell; labels_path naming a folder was said not to exist."""
    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import find_labelled_log, parse_instances

    for value in ("99999999999999999999", [2**63], "1, -9223372036854775809"):
        with pytest.raises(ConfigurationError, match=r"`instances` parameter .* each a 64-bit integer"):
            parse_instances(value)
    assert parse_instances(str(2**63 - 1)) == [2**63 - 1] and parse_instances(7) == [7]
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(ConfigurationError, match=r"Got '.*', which is a folder; name one of its files"):
        find_labelled_log(settings, str(tmp_path))
    assert find_labelled_log(settings, " None ") is None


def test_an_evaluation_day_inside_a_versions_training_window_is_called_in_sample(tmp_path: Path) -> None:
    """Notebook 03 with day=2024-03-04 compared v0003 (trained on 03-04..03-06: recall 1.0) with v0001 as if
    both had met the day fresh."""
    import json

    settings = Settings(home=tmp_path)
    for version, days in (("v0001-2024-03-04", ["2024-03-04"]),
                          ("v0003-2024-03-06", ["2024-03-04", "2024-03-05", "2024-03-06"])):
        folder = settings.models_dir / "versions" / version
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps({"window_days": days}))
    versions = ["v0001-2024-03-04", "v0003-2024-03-06"]
    both = ds.in_sample_note(settings, dt.date(2024, 3, 4), versions)
    assert "v0001-2024-03-04, v0003-2024-03-06 were trained on" in both and "their figures there are in-sample" in both
    one = ds.in_sample_note(settings, dt.date(2024, 3, 5), versions)
    assert "v0003-2024-03-06 was trained on" in one and "v0001" not in one and "its figures" in one
    assert ds.in_sample_note(settings, dt.date(2024, 3, 7), versions) == ""  # an unseen day: nothing to say
    assert ds.in_sample_note(settings, None, versions) == ""


def test_a_disagreement_selection_of_unknown_instances_names_what_the_day_holds() -> None:
    """Notebook 03 with instances=99999 showed an empty crosstab and "0 of 0 queries flagged", as if the
    versions agreed on everything; unlabelled rows read NaN in the kind column."""
    import pyarrow as pa

    table = pa.table({"arrival_timestamp": pa.array(pd.to_datetime(["2024-03-07 00:05", "2024-03-07 23:50"], utc=True)),
                      "instance_id": [47, 69], "query_id": [1, 2], "label_kind": [None, "spill_storm"]})
    out = {"is_anomaly": np.array([False, True]), "score": np.array([0.1, 3.0])}
    scored = ds.ScoredDay(day=dt.date(2024, 3, 7), table=table, labels=np.array([False, True]),
                          outputs={"a": out, "b": out})
    frame = ds.disagreements(scored, "a", "b", instances=[99999])
    assert frame.empty
    note = ds.empty_selection_note(scored, frame, instances=[99999])
    assert note == ("no query matches the filters (instances 99999): the day holds 2 queries of instances 47, 69, "
                    "2024-03-07 00:05 to 2024-03-07 23:50 UTC")
    every = ds.disagreements(scored, "a", "b")
    assert ds.empty_selection_note(scored, every) == "" and every["kind"].tolist() == ["", "spill_storm"]


def test_a_reason_or_version_that_names_nothing_is_refused_with_the_closest_known_ones(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Notebook 02 with reason="slow_exec" filtered every anomaly out and its agreement table read
    recall 0 for every kind, as if the detector had missed them all."""
    from tests.notebook_home import cached_home
    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import parse_reason, parse_versions

    home, _ = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    with pytest.raises(ConfigurationError, match=r"no anomaly reason: 'slow_exec'\. Did you mean 'slow_execution'"):
        parse_reason(settings, "slow_exec")
    assert parse_reason(settings, " slow_execution ") == "slow_execution" and parse_reason(settings, "") is None
    stored = set(summary.anomalies_or_empty(settings)["reason"])
    assert stored and all(parse_reason(settings, r) == r for r in stored)
    with pytest.raises(ConfigurationError, match=r"names no model version: 'v0009'\. Known: v0001-2024-03-04, v0002"):
        parse_versions(settings, "v0009")
    with pytest.raises(ConfigurationError, match=r"'v0002'\. Did you mean 'v0002-2024-03-05'\?"):
        parse_versions(settings, "v0002")
    with pytest.warns(UserWarning, match=r"versions v0009 ignored"):
        assert parse_versions(settings, "v0009, v0002-2024-03-05") == ["v0002-2024-03-05"]
    assert parse_versions(settings, "") == []
    empty = Settings(home=tmp_path / "empty")  # nothing written yet: the detector's reasons still count
    assert parse_reason(empty, "queue_longer_than_run") == "queue_longer_than_run"
    with pytest.raises(ConfigurationError, match=r"Known: none yet: no model version was written"):
        parse_versions(empty, "v0001")


def test_the_flagged_windows_say_that_a_reason_or_version_filter_does_not_narrow_them() -> None:
    """02's reason filter left the collective table as it was, without a word (a browser finding)."""
    assert summary.windows_scope() is None
    note = summary.windows_scope(reason="long_queue", versions=["v0002-2024-03-05"])
    assert "reason 'long_queue'" in note and "v0002-2024-03-05" in note and "narrow the queries only" in note
    assert "narrows the queries only" in summary.windows_scope(reason="long_queue") and "`" not in note
    assert "versions v1" in summary.windows_scope(versions=["v1"])


def test_the_report_summary_counts_the_streams_alerts_and_narrows_to_the_reports_versions(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A tester's `workbench rescore` of the whole log moved the summary's precision (0.716 -> 0.660: the
    rescored version's alerts, on its own training day too, counted with the stream's), and `report
    --versions V` gave a notebook of V's 1,046 anomalies under a summary of every version's 9,909."""
    from tests.notebook_home import cached_home
    from workbench.analysis.detection_summary import label_agreement
    from workbench.reports._summary import key_figures

    home, data = cached_home(tmp_path_factory.getbasetemp())
    settings = Settings(home=home)
    figures = key_figures(settings, labels_file=data)
    every = summary.anomalies_or_empty(settings)
    scored = summary.scored_queries(settings)
    stream = summary.stream_alerts(every, scored)
    assert len(stream) == len(every) > 0  # the stream's alerts are every alert of this home
    # a rescore by another version adds its alerts beside them: every scored query of the log, flagged
    rescored = scored.assign(model_version="v0009-2024-03-04", reason="slow_execution",
                             arrival_timestamp=pd.Timestamp("2024-03-05", tz="UTC"))
    both = pd.concat([every, rescored[[c for c in rescored.columns if c in every.columns]]], ignore_index=True)
    assert len(summary.stream_alerts(both, scored)) == len(every)
    polluted = label_agreement(both, data, scored=scored)
    clean = label_agreement(summary.stream_alerts(both, scored), data, scored=scored)
    assert polluted.precision < clean.precision == figures["agreement"].precision
    from workbench.ml.registry import ModelRegistry

    versions = ModelRegistry(settings.models_dir).versions()
    counts = [int((every["model_version"] == v).sum()) for v in versions]
    assert len(versions) == 2 and sum(counts) == len(every)
    for version, count in zip(versions, counts, strict=True):
        only = key_figures(settings, labels_file=data, versions=[version])
        assert only["anomalies"] == count and set(only["by_reason"]["model_version"]) <= {version}
        # the summary page says what its recall is over, as notebook 02 does (tester B, 33rd session)
        assert f"versions {version}" in only["agreement_scope"], only["agreement_scope"]
    assert figures.get("agreement_scope") is None
    # the store holds windows, only not of instance 999: it read "no window stats yet"
    assert key_figures(settings, instances=[999])["critical_why"] == "no window of the selected instances and span"


def test_the_drill_down_heading_says_the_score_and_the_bar_it_cleared() -> None:
    """A browser tester (40th session): the drill-down picks the highest-scoring anomaly, and its score was shown
    nowhere in notebook 02."""
    from workbench.analysis.anomaly_summary import query_heading

    arrived = pd.Timestamp("2024-03-06 12:00:01", tz="UTC")
    row = pd.Series({"query_id": 42, "instance_id": 7, "arrival_timestamp": arrived,
                     "reason": "slow_execution", "score": 3.14159, "model_version": "v0002-2024-03-05",
                     "features": json.dumps({"threshold": 1.0, "evidence_signal": "exec"})})
    assert query_heading(row) == ("**Query 42** on instance 7, arrived 2024-03-06 12:00:01 UTC, reason "
                                  "`slow_execution`, score 3.14 (it alerts from 1), model `v0002-2024-03-05`")
    bare = row.drop(labels=["features"]).copy()
    bare["score"] = None
    assert "score" not in query_heading(bare) and query_heading(bare).endswith("model `v0002-2024-03-05`")
