"""Read API on real SQLite + DuckLake files: periods from data time, shares, critical rule, metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workbench.analysis import classify
from workbench.analysis.anomaly_summary import metrics_for_versions
from workbench.analysis.exceptions import AnalysisError, UnknownWindowError
from workbench.analysis.read import (
    anomalies,
    class_shares,
    critical_instances,
    critical_types,
    data_end,
    metrics,
    period,
    remediation,
    window_stats,
)
from workbench.config import Settings
from workbench.store.exceptions import LakehouseNotFoundError, StoreNotFoundError
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.window_stats import WindowStatsStore

T0 = datetime(2024, 3, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "wb")
    rows = []
    for w in range(2 * 144):  # two days of 10-minute windows
        start = T0 + timedelta(minutes=10 * w)
        day2 = start >= T0 + timedelta(days=1)
        rows.append({"instance_id": 1, "window_start": start, "window_end": start + timedelta(minutes=10),
                     "cluster_size": 4 if day2 else 2, "total_queries": 100, "normal_queries": 90,
                     "cpu_bound_queries": 10, "total_spilled_mb": 5, "total_queue_time_ms": 300,
                     "total_exec_time_ms": 700 if day2 else 1700})
        # instance 2: many queries, 51 io-bound per day in total (tiny share)
        rows.append({"instance_id": 2, "window_start": start, "window_end": start + timedelta(minutes=10),
                     "total_queries": 1000, "normal_queries": 1000 - (1 if w % 144 < 51 else 0),
                     "io_bound_queries": 1 if w % 144 < 51 else 0})
    with WindowStatsStore.from_settings(s) as store:
        store.upsert(rows)
    return s


def test_period_from_data_time(settings: Settings) -> None:
    assert data_end(settings) == END
    p = period(settings, "24h")
    assert (p.start, p.end, p.previous_start) == (END - timedelta(days=1), END, T0)
    with pytest.raises(UnknownWindowError, match="'2h'"):
        period(settings, "2h")


def test_window_stats_and_shares(settings: Settings) -> None:
    df = window_stats(settings, T0, T0 + timedelta(hours=1), [1])
    assert len(df) == 6 and str(df["window_start"].dt.tz) == "UTC"
    shares = class_shares(settings, T0, T0 + timedelta(hours=1))
    assert len(shares) == 6
    assert shares["total_queries"].iloc[0] == 1100
    assert shares["cpu_bound_share"].iloc[0] == pytest.approx(10 / 1100)
    with pytest.raises(AnalysisError, match="timezone-aware"):
        window_stats(settings, datetime(2024, 3, 1))


def test_critical_rule_default_and_legacy(settings: Settings) -> None:
    crit = critical_instances(settings, "24h")
    assert crit["instance_id"].tolist() == [1]  # 1440 cpu-bound, 10 %
    assert crit["critical_types"].tolist() == [["cpu_bound"]]
    legacy = critical_instances(settings, "24h", mode="any")
    assert legacy["instance_id"].tolist() == [1, 2]  # 51 io-bound of 144,000 passes "> 50"
    assert critical_types(settings, "24h", [2]) == []
    assert critical_types(settings, "24h", [2], mode="any") == ["io_bound"]


def test_metrics_and_anomalies(settings: Settings) -> None:
    # Before the sink's first anomaly (no lakehouse yet) the count is 0, as 04's tables have it: its
    # card read "Anomaly queries n/a" above a table reading "Anomalies 0".
    before = metrics(settings, "24h", [1])
    assert before["anomalies"] == 0 and before["anomalies_delta"] == 0
    with AnomalyLakehouse.from_settings(settings) as lake:
        lake.write([{"instance_id": 1, "query_id": q, "model_version": "v1", "reason": "r",
                     "arrival_timestamp": END - timedelta(hours=h)} for q, h in enumerate([1, 2, 30, 49])])
    m = metrics(settings, "24h", [1])
    assert m["score"] == pytest.approx(0.9) and m["score_delta"] == pytest.approx(0.0)
    assert m["queue_ratio"] == pytest.approx(0.3) and m["queue_ratio_delta"] == pytest.approx(0.3 - 0.15)
    assert m["cluster_size"] == 4
    assert m["anomalies"] == 2 and m["anomalies_delta"] == 1  # 49 h ago is outside both periods
    assert m["spilled_mb"] == 5 * 144 and m["spilled_mb_delta"] == 0
    df = anomalies(settings, start=END - timedelta(days=1), end=END, instances=[1], limit=1)
    assert df["query_id"].tolist() == [0]  # newest first
    assert str(df["arrival_timestamp"].dt.tz) == "UTC"
    assert len(anomalies(settings, reason="other")) == 0
    week = metrics(settings, "1week", [1])  # the week before holds no window: no data, not zero anomalies
    assert week["anomalies"] == 4 and week["anomalies_delta"] is None and week["score_delta"] is None
    # Every delta, the instance count's too: 04's metrics table showed instances_delta 1 (1 - 0) in a row
    # whose every other delta, and every card, said "no previous data".
    assert week["instances"] == 1
    assert all(week[key] is None for key in week if key.endswith("_delta")), week
    versions = metrics_for_versions(settings, "1week", [1], ["v1"])
    assert versions["anomalies"] == 4 and versions["anomalies_delta"] is None and versions["versions_note"] == ""
    assert metrics_for_versions(settings, "24h", [1], ["v1"])["anomalies_delta"] == 1
    # A version that scored neither period (no shard names it, no anomaly of it): no count, no change, a note
    # (it read "0, -223 vs previous" in green for a day it never scored)
    other = metrics_for_versions(settings, "24h", [1], ["v9"])
    assert other["anomalies"] is None and other["anomalies_delta"] is None
    assert other["versions_note"] == "v9 scored no query of this period"
    with AnomalyLakehouse.from_settings(settings) as lake:  # a rescore of v9 flagged one query of this period
        lake.write([{"instance_id": 1, "query_id": 99, "model_version": "v9", "reason": "r",
                     "arrival_timestamp": END - timedelta(hours=3)}])
    other = metrics_for_versions(settings, "24h", [1], ["v9"])
    assert other["anomalies"] == 1 and other["anomalies_delta"] is None
    assert other["versions_note"] == "v9 scored no query of the previous period"


def test_missing_stores_are_explained(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "empty")
    with pytest.raises(StoreNotFoundError, match="stream-analytics"):
        window_stats(s)
    with pytest.raises(LakehouseNotFoundError):
        anomalies(s)


def test_remediation_quotes_code_thresholds() -> None:
    for problem in ("cpu_bound", "io_bound", "network_bound", "queue_wlm_bound", "normal"):
        text = remediation(problem)
        assert "{" not in text and text.startswith("###")
    assert f"{classify.CPU_RATIO:g} ms" in remediation("cpu_bound")
    assert f"{classify.IO_SCANNED_MB:,} MB" in remediation("io_bound")
    assert f"{classify.NETWORK_EXEC_MS:,} ms" in remediation("network_bound")
    assert f"{classify.QUEUE_MIN_MS:,} ms" in remediation("queue_wlm_bound")
    # no stale numbers from the earlier texts
    assert not re.search(r"5,000|1,000 ms/MB|10 ms/MB", remediation("cpu_bound") + remediation("io_bound"))
    with pytest.raises(AnalysisError, match="problem must be"):
        remediation("disk")


def test_an_empty_selection_says_what_the_store_holds(settings: Settings, tmp_path: Path) -> None:
    from workbench.analysis.anomaly_summary import describe_windows

    line = describe_windows(settings, window_stats(settings, T0, T0 + timedelta(hours=1), [1]))
    assert line == "6 windows, 1 instance, 2024-03-01 00:00 to 2024-03-01 01:00 UTC"
    line = describe_windows(settings, window_stats(settings, instances=[7, 8]), instances=[7, 8])
    assert line == ("no windows match the filters (instances 7, 8): the store holds 576 windows of instances 1, 2, "
                    "2024-03-01 00:00 to 2024-03-03 00:00 UTC")
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert "(start 2030-01-01 00:00)" in describe_windows(settings, window_stats(settings, later), start=later)
    fresh = Settings(home=tmp_path / "fresh")
    with WindowStatsStore.from_settings(fresh) as store:
        store.upsert([])
    assert describe_windows(fresh, window_stats(fresh)) == "window_stats is empty: replay some data first"


def test_a_home_without_a_window_stats_store_reads_as_no_windows_yet(tmp_path: Path) -> None:
    """Notebook 04 on a fresh home (nothing replayed yet) says so instead of a StoreNotFoundError traceback."""
    from workbench.analysis.anomaly_summary import class_shares_or_empty, classification_table, describe_windows
    from workbench.analysis.anomaly_summary import window_stats_or_empty as stats_or_empty
    from workbench.ui.charts import class_shares_chart, to_svg

    fresh = Settings(home=tmp_path / "fresh")
    with pytest.raises(StoreNotFoundError):
        window_stats(fresh)
    stats = stats_or_empty(fresh, start=T0, instances=[1])
    assert stats.empty and "total_queries" in stats.columns
    assert describe_windows(fresh, stats, start=T0) == "window_stats is empty: replay some data first"
    assert classification_table(stats, 0).empty
    shares = class_shares_or_empty(fresh)
    assert shares.empty and "<svg" in to_svg(class_shares_chart(shares))


def test_a_previous_period_with_less_data_is_said_to_be_unequal(settings: Settings, tmp_path: Path) -> None:
    """04 during a replay: 'Queries 63,946 (+47,566)' against a previous 24 h that held 7 h 40 min of log."""
    from workbench.analysis.read import coverage_note

    full = metrics(settings, "24h", [1])
    assert (full["covered_h"], full["previous_covered_h"]) == (24.0, 24.0) and coverage_note(full) == ""
    late = Settings(home=tmp_path / "late")  # a replay that began at 16:20 on the first day
    with WindowStatsStore.from_settings(late) as store:
        store.upsert([{"instance_id": 1, "window_start": start, "window_end": start + timedelta(minutes=10),
                       "total_queries": 100, "normal_queries": 100}
                      for start in (T0 + timedelta(minutes=10 * w) for w in range(98, 2 * 144))])
    short = metrics(late, "24h", [1])
    assert (short["covered_h"], short["previous_covered_h"]) == (24.0, 7.67)
    assert coverage_note(short) == ("the previous period holds windows for 7.67 h, this one for 24 h: its changes "
                                    "compare unequal spans of data")
    week = metrics(settings, "1week", [1])  # no previous data at all: the cards say so, and the span
    held = week["covered_h"]
    assert coverage_note(week) == f"this period holds windows for {held:g} h of its 168 h (the log is shorter)"


def test_a_period_longer_than_the_log_says_how_much_it_holds(tmp_path: Path) -> None:
    """04's '1week' card over a 3-day log read like a week of data, beside 'no previous data'."""
    from workbench.analysis.read import coverage_note

    short = Settings(home=tmp_path / "short")
    with WindowStatsStore.from_settings(short) as store:
        store.upsert([{"instance_id": 1, "window_start": start, "window_end": start + timedelta(minutes=10),
                       "total_queries": 10, "normal_queries": 10}
                      for start in (T0 + timedelta(minutes=10 * w) for w in range(3 * 144))])
    week = metrics(short, "1week", [1])
    assert week["covered_h"] == 72.0
    assert coverage_note(week) == "this period holds windows for 72 h of its 168 h (the log is shorter)"
    assert coverage_note(metrics(short, "24h", [1])) == ""  # a full day, a full day before it


def test_cards_survive_saturated_sums_and_keep_the_last_known_cluster_size(tmp_path: Path) -> None:
    """Tester C, 34th session: two windows at the int64 maximum (a corrupt 2**62 ms duration, which the
    store saturates) failed the cards' cast, and with it notebook 04 and `workbench report`; a window whose
    queries lacked `cluster_size` blanked the card where the earlier implementation carried the size on."""
    s = Settings(home=tmp_path / "wb")
    rows = []
    for w in range(2 * 144):
        start = T0 + timedelta(minutes=10 * w)
        rows.append({"instance_id": 3, "window_start": start, "window_end": start + timedelta(minutes=10),
                     "cluster_size": 16 if w < 100 else None, "total_queries": 10, "normal_queries": 10,
                     "total_queue_time_ms": 5, "total_exec_time_ms": 2**63 - 1 if w in (150, 151) else 100})
    with WindowStatsStore.from_settings(s) as store:
        store.upsert(rows)
    m = metrics(s, "24h", [3])
    assert m["total_queries"] == 1440 and m["cluster_size"] == 16  # none in the last 24 h: carried on
    assert m["queue_ratio"] == pytest.approx(0.0, abs=1e-9)  # exec saturated at the maximum, not wrapped
    assert class_shares(s, instances=[3])["total_queries"].sum() == 2880
    assert metrics(s, "1week", [3])["cluster_size"] == 16


def test_a_selection_whose_data_end_early_gets_its_own_periods_and_no_false_changes(tmp_path: Path) -> None:
    """A browser tester (40th session): two instances with data on the first day only read, on notebook 04's 24 h
    cards, '0 instances', n/a and 'no previous data' (the previous period held all their queries), and in its
    table 'Instances 0 (-2)' and 'Cluster size 8 (no change)': the periods ended at the fleet's newest data."""
    from workbench.ui import charts

    s = Settings(home=tmp_path / "wb")
    rows = []
    for w in range(3 * 144):  # instance 1: three days; instances 86 and 131: the first day only
        start = T0 + timedelta(minutes=10 * w)
        for inst in (1, 86, 131) if w < 144 else (1,):
            rows.append({"instance_id": inst, "window_start": start, "window_end": start + timedelta(minutes=10),
                         "cluster_size": 8, "total_queries": 10, "normal_queries": 9, "total_queue_time_ms": 5,
                         "total_exec_time_ms": 100})
    with WindowStatsStore.from_settings(s) as store:
        store.upsert(rows)
    m = metrics(s, "24h", [86, 131])
    assert m["period"].end == T0 + timedelta(days=1)  # the selection's newest data
    assert m["instances"] == 2 and m["total_queries"] == 2 * 1440
    fleet = metrics(s, "24h", [86, 131], end=T0 + timedelta(days=3))  # a period after the selection's data
    assert fleet["total_queries"] is None and fleet["cluster_size"] is None
    assert all(fleet[f"{k}_delta"] is None for k in ("instances", "total_queries", "cluster_size", "score"))
    cards = charts.metric_cards_html(fleet)
    assert "no data in this period" in cards and "no previous data" not in cards
    table = charts.metrics_table({"24h": {k: v for k, v in fleet.items() if k != "period"}})
    assert "(-2)" not in table.loc["24h", "Instances"] and table.loc["24h", "Cluster size (nodes)"] == "n/a"
