"""Collective anomalies: window scoring against the instance's own history, the lakehouse table, the step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workbench.analysis import read
from workbench.analysis.collective import (
    WINDOW_ANOMALY_SCHEMA,
    CollectiveParams,
    CollectiveStep,
    flag_windows,
    format_signal_value,
    pair_threshold,
    score_window_runs,
    score_windows,
    with_silent_windows,
)
from workbench.config import Settings
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.window_stats import WindowStatsStore

T0 = datetime(2024, 3, 4, tzinfo=UTC)


def _windows(n: int = 3 * 144, seed: int = 0, instance: int = 7) -> pd.DataFrame:
    """Three quiet days of one instance: ~60 queries per window with a daily cycle, little queueing."""
    rng = np.random.default_rng(seed)
    starts = [T0 + timedelta(minutes=10 * k) for k in range(n)]
    hours = np.array([s.hour for s in starts])
    total = rng.poisson(60 * (1 + 0.5 * np.sin(hours / 24 * 2 * np.pi)))
    queue = rng.poisson(total * 30)  # ~30 ms per query
    return pd.DataFrame({
        "instance_id": instance, "window_start": starts, "window_end": [s + timedelta(minutes=10) for s in starts],
        "cluster_size": 4, "total_queries": total, "normal_queries": total, "cpu_bound_queries": 0,
        "io_bound_queries": 0, "network_bound_queries": 0, "queue_wlm_bound_queries": rng.binomial(total, 0.01),
        "total_spilled_mb": rng.poisson(50, n), "total_queue_time_ms": queue,
        "total_exec_time_ms": rng.poisson(total * 400), "p95_exec_time_ms": rng.gamma(20, 100, n),
        "max_exec_time_ms": rng.poisson(5_000, n), "anomalies": 0,
    })


def test_quiet_history_flags_nothing_and_a_queue_storm_flags_its_windows() -> None:
    w = _windows()
    scored = score_windows(w.iloc[144:], w)
    assert len(scored) and (scored["score"] < 1).mean() > 0.995  # at most a stray window in two days
    storm = w.copy()
    hit = slice(300, 302)  # 20 minutes: every query waits 4 s longer
    storm.loc[storm.index[hit], "total_queue_time_ms"] += storm["total_queries"].iloc[hit] * 4_000
    # Most queries run ~400 ms, so waiting 4 s more makes them queue-bound (classify.py's rule).
    storm.loc[storm.index[hit], "queue_wlm_bound_queries"] = (storm["total_queries"].iloc[hit] * 0.8).astype(int)
    flagged = flag_windows(storm.iloc[290:310], storm).to_pandas()
    got = set(zip(flagged["window_start"], flagged["signal"], strict=True))
    starts = {pd.Timestamp(s) for s in storm["window_start"].iloc[hit]}
    assert {s for s, _ in got} == starts
    assert "queue_bound_share" in {g for _, g in got}
    row = flagged[flagged["signal"] == "queue_bound_share"].iloc[0]
    assert row["observed"] > row["expected"] + 0.5
    assert "WLM" in row["reason"] and "expected" in row["reason"]


def test_small_absolute_changes_never_flag_however_surprising() -> None:
    w = _windows()
    # The queue-bound share triples (1 % -> 3 %): relatively huge, absolutely two queries.
    w.loc[w.index[300:302], "queue_wlm_bound_queries"] = (w["total_queries"].iloc[300:302] * 0.03).astype(int)
    # One runaway query (an hour) in a window moves the mean, not the mean without the longest.
    w.loc[w.index[303], "total_exec_time_ms"] += 3_600_000
    w.loc[w.index[303], "max_exec_time_ms"] = 3_600_000
    flagged = flag_windows(w.iloc[290:310], w).to_pandas()
    assert flagged.empty, flagged


def test_a_level_is_judged_only_once_the_reference_holds_an_earlier_day() -> None:
    """On an instance's first day its daily cycle is unknown: the busy afternoon is no surge against the
    quiet morning. A share is judged from the first hours (its test knows the window's size)."""
    w = _windows()
    hour, later = 15 * 6, 144 + 9 * 6  # 15:00 of the first day; 09:00 of the second
    for at in (hour, later):
        w.loc[w.index[at:at + 2], "total_queries"] *= 3
        w.loc[w.index[at:at + 2], "queue_wlm_bound_queries"] = (w["total_queries"].iloc[at:at + 2] * 0.6).astype(int)
    first = score_windows(w.iloc[hour:hour + 2], w)
    assert len(first) and not (first["signal"] == "arrivals").any()  # not judged on its level
    assert set(flag_windows(w.iloc[hour:hour + 2], w)["signal"].to_pylist()) == {"queue_bound_share"}
    second = set(flag_windows(w.iloc[later:later + 2], w)["signal"].to_pylist())
    assert {"arrivals", "queue_bound_share"} <= second


def test_needs_history_and_uses_only_earlier_windows() -> None:
    w = _windows()
    assert score_windows(w.iloc[:10], w).empty  # first windows: not enough history
    # The future does not change the past's score.
    a = score_windows(w.iloc[200:201], w.iloc[:201])
    b = score_windows(w.iloc[200:201], w)
    pd.testing.assert_frame_equal(a, b)


def test_a_resize_is_flagged_on_cluster_size() -> None:
    w = _windows()
    w.loc[w.index[300:304], "cluster_size"] = 2
    flagged = flag_windows(w.iloc[300:304], w, CollectiveParams()).to_pandas()
    assert (flagged["signal"] == "cluster_size").sum() == 4


def test_step_writes_window_anomalies_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    w = _windows()
    w.loc[w.index[300:302], "queue_wlm_bound_queries"] = w["total_queries"].iloc[300:302] // 2
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(w.to_dict("records"))
    step = CollectiveStep(settings)
    inserted = step.run()
    assert inserted >= 2
    assert step.run() == 0  # nothing new
    again = CollectiveStep(settings)  # a restart: cursor lost, everything scored again
    assert again.run() == 0  # insert-if-absent: no duplicates
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        table = lake.read_window_anomalies()
    assert table.num_rows == inserted
    assert set(WINDOW_ANOMALY_SCHEMA.names) <= set(table.column_names)
    frame = read.window_anomalies(settings, instances=[7])
    assert len(frame) == inserted and frame["window_start"].is_monotonic_decreasing
    starts = set(pd.to_datetime(frame["window_start"], utc=True))
    assert {pd.Timestamp(s) for s in w["window_start"].iloc[300:302]} <= starts


def test_step_scores_a_lagging_instance_s_windows_that_close_after_another_s(tmp_path: Path) -> None:
    """One instance's windows close late (a slow partition): none of them is skipped."""
    settings = Settings(home=tmp_path / "home")
    fast = _windows(instance=7)
    slow = _windows(seed=1, instance=8)
    slow.loc[slow.index[300:302], "queue_wlm_bound_queries"] = slow["total_queries"].iloc[300:302] // 2
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(fast.to_dict("records"))
        store.upsert(slow.iloc[:250].to_dict("records"))  # instance 8 lags by more than 8 hours
    step = CollectiveStep(settings)
    step.run()
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(slow.iloc[250:].to_dict("records"))  # ... and catches up
    inserted = step.run()
    assert inserted >= 2
    frame = read.window_anomalies(settings, instances=[8])
    starts = set(pd.to_datetime(frame["window_start"], utc=True))
    assert {pd.Timestamp(s) for s in slow["window_start"].iloc[300:302]} <= starts
    assert step.run() == 0  # idempotent: nothing new
    assert CollectiveStep(settings).run() == 0  # a restart scores everything again, inserts nothing


@pytest.mark.parametrize("bad", [None, pd.DataFrame()])
def test_empty_input_gives_empty_output(bad: pd.DataFrame | None) -> None:
    assert score_windows(bad).empty


def _with_counts(w: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """The quiet windows plus the per-window counts of cached, aborted, spilled, queued and slow queries."""
    rng = np.random.default_rng(seed)
    w = w.copy()
    total = w["total_queries"].to_numpy()
    w["cached_queries"] = rng.binomial(total, 0.3)
    executed = total - w["cached_queries"].to_numpy()
    w["aborted_queries"] = rng.binomial(total, 0.01)
    w["spilled_queries"] = rng.binomial(executed, 0.03)
    w["queued_queries"] = rng.binomial(executed, 0.02)
    w["slow_queries"] = rng.binomial(executed, 0.2)
    w["max_queue_time_ms"] = rng.poisson(2_000, len(w))
    return w


@pytest.mark.parametrize(("column", "value", "signal"), [
    ("cached_queries", lambda n, c: 0 * c, "cache_hit_share"),  # the result cache was invalidated
    ("aborted_queries", lambda n, c: n // 3, "abort_share"),  # an abort-and-retry loop
    ("spilled_queries", lambda n, c: (n - c) // 2, "spill_share"),  # memory pressure: a spill wave
    ("queued_queries", lambda n, c: n - c, "queued_share"),  # everyone waits a few seconds longer
    ("slow_queries", lambda n, c: (n - c) * 3 // 4, "slow_share"),  # everyone runs a second longer
])
def test_share_signals_flag_a_collective_change_of_their_share(column, value, signal) -> None:
    w = _with_counts(_windows())
    quiet = flag_windows(w.iloc[290:310], w).to_pandas()
    assert quiet.empty, quiet
    hit = w.index[300:302]
    w.loc[hit, column] = value(w.loc[hit, "total_queries"], w.loc[hit, "cached_queries"])
    flagged = flag_windows(w.iloc[290:310], w).to_pandas()
    got = flagged[flagged["signal"] == signal]
    assert set(got["window_start"]) == {pd.Timestamp(s) for s in w.loc[hit, "window_start"]}, flagged
    row = got.iloc[0]
    assert abs(row["observed"] - row["expected"]) >= 0.1
    # the reason reads in percent, as the notebooks' table does (it read "observed 0.1778 vs expected 3.187e-05")
    observed, expected = (format_signal_value(signal, row[c]) for c in ("observed", "expected"))
    shown = f"observed {observed} vs expected {expected}"
    assert shown in row["reason"] and "%" in shown and "e-0" not in row["reason"], row["reason"]


def test_share_signals_need_many_queries_and_a_significant_share() -> None:
    w = _with_counts(_windows())
    # Three extra aborts in a window: a 5 % share over a 1 % history, but not a collective claim.
    w.loc[w.index[300], "aborted_queries"] += 3
    # A quiet window (8 queries) where half abort: large share, too few queries to prove anything.
    w.loc[w.index[303], ["total_queries", "cached_queries", "aborted_queries"]] = [8, 2, 4]
    flagged = flag_windows(w.iloc[290:310], w).to_pandas()
    assert not (flagged["signal"] == "abort_share").any(), flagged


def test_windows_of_an_earlier_store_without_counts_score_without_share_signals() -> None:
    w = _windows()  # no cached/aborted/... columns at all: the signals are simply not judged
    scored = score_windows(w.iloc[300:302], w)
    assert len(scored) and not scored["signal"].isin(["abort_share", "cache_hit_share", "slow_share"]).any()
    w = _with_counts(w)
    w.loc[w.index[:200], "aborted_queries"] = None  # NULL: windows written before the counts existed
    scored = score_windows(w.iloc[300:302], w)
    assert scored["signal"].eq("abort_share").sum() == 2  # judged against the windows that have counts



def _with_compile(w: pd.DataFrame, seed: int = 2) -> pd.DataFrame:
    """The windows with counts plus compile time: ~3 % of the executed queries compile for over 10 s."""
    rng = np.random.default_rng(seed)
    w = _with_counts(w)
    executed = (w["total_queries"] - w["cached_queries"]).to_numpy()
    w["long_compile_queries"] = rng.binomial(executed, 0.03)
    w["max_compile_time_ms"] = rng.poisson(30_000, len(w))
    w["total_compile_time_ms"] = rng.poisson(executed * 800) + w["max_compile_time_ms"]
    return w


def test_a_compilation_storm_is_flagged_and_normal_variation_is_not() -> None:
    w = _with_compile(_windows())
    hit = w.index[300:306]  # an hour of a cold compile cache: a third of the executed queries compile > 10 s
    executed = w.loc[hit, "total_queries"] - w.loc[hit, "cached_queries"]
    normal = w.copy()
    normal.loc[hit, "long_compile_queries"] *= 2  # twice the usual: a few queries more
    normal.loc[w.index[308], "long_compile_queries"] += 3  # three new statements compile for minutes
    quiet = flag_windows(normal.iloc[290:320], normal).to_pandas()
    assert not quiet["signal"].eq("long_compile_share").any(), quiet
    storm = w.copy()
    storm.loc[hit, "long_compile_queries"] = executed // 3
    flagged = flag_windows(storm.iloc[290:320], storm).to_pandas()
    got = flagged[flagged["signal"] == "long_compile_share"]
    assert set(got["window_start"]) == {pd.Timestamp(s) for s in storm.loc[hit, "window_start"]}, flagged
    row = got.iloc[0]
    assert row["observed"] > row["expected"] + 0.25 and "compile" in row["reason"]


def test_windows_stored_before_compile_counts_existed_are_not_judged_on_them() -> None:
    w = _with_compile(_windows())
    hit = w.index[300:302]
    w.loc[hit, "long_compile_queries"] = (w.loc[hit, "total_queries"] - w.loc[hit, "cached_queries"]) // 2
    assert flag_windows(w.iloc[300:302], w).to_pandas()["signal"].eq("long_compile_share").sum() == 2
    old = w.copy()  # the same storm, but its history was written by an earlier version (NULL counts)
    old.loc[old.index[:296], ["long_compile_queries", "total_compile_time_ms", "max_compile_time_ms"]] = None
    scored = score_windows(old.iloc[290:310], old)
    assert len(scored) and not scored["signal"].eq("long_compile_share").any()  # too little history
    old.loc[hit, "long_compile_queries"] = None  # a NULL observation is not judged either
    scored = score_windows(old.iloc[290:310], w.assign(long_compile_queries=None))
    assert len(scored) and not scored["signal"].eq("long_compile_share").any()


def test_a_few_huge_queries_are_not_a_slow_window_but_every_query_slower_is() -> None:
    w = _with_counts(_windows())
    few = w.copy()
    # Three never-seen statements of 20 minutes in one window: the mean without the longest still
    # rises by ~40 s a query, but two queries hold all of it (the per-query detector's story).
    few.loc[few.index[303], "total_exec_time_ms"] += 3 * 1_200_000
    few.loc[few.index[303], "max_exec_time_ms"] = 1_200_000
    few.loc[few.index[303], "max_queue_time_ms"] = 600_000  # the same for two waits of 10 minutes
    few.loc[few.index[303], "total_queue_time_ms"] += 2 * 600_000
    scored = score_windows(few.iloc[303:304], few)
    means = scored[scored["signal"].isin(["exec_per_query_ms", "queue_per_query_ms"])].set_index("signal")
    assert len(means) == 2 and (means["z"] > 5).all() and (means["excess"] > 1_000).all()  # unusual, material
    assert (means["score"] < 1).all(), means
    slow = w.copy()
    hit = slow.index[300:302]  # twenty minutes in which every query runs 3 s longer
    slow.loc[hit, "total_exec_time_ms"] += slow.loc[hit, "total_queries"] * 3_000
    slow.loc[hit, "max_exec_time_ms"] += 3_000
    flagged = flag_windows(slow.iloc[290:310], slow).to_pandas()
    got = flagged[flagged["signal"] == "exec_per_query_ms"]
    assert set(got["window_start"]) == {pd.Timestamp(s) for s in slow.loc[hit, "window_start"]}, flagged


def test_p95_is_judged_only_where_the_queries_above_it_make_a_claim() -> None:
    w = _windows()
    busy = w.index[(w["total_queries"] >= 100) & (w.index >= 300)][0]
    quiet = w.index[(w["total_queries"] < 100) & (w.index >= 300)][0]
    w.loc[[busy, quiet], "p95_exec_time_ms"] = 600_000.0  # 5 % of 60 queries: three of them
    scored = score_windows(w.loc[[busy, quiet]], w)
    p95 = scored[scored["signal"] == "p95_exec_ms"]
    assert list(p95["window_start"]) == [pd.Timestamp(w.loc[busy, "window_start"])]
    assert p95["score"].iloc[0] >= 1


def _log(seed: int = 3, slow: range = range(0), factor: float = 1.0, big: range = range(0)) -> pd.DataFrame:
    """``window_stats`` (via :func:`windows_of`) of three days of one instance's queries, ~100 per window.

    Execution time is about 2 ms per MB scanned times a per-query spread (plus a fixed 50 ms); a
    fifth of the queries are large (100x the MB). Windows in ``slow`` run every query ``factor``
    times slower; in ``big`` windows, three in five queries are large (a mix change).
    """
    import pyarrow as pa

    from workbench.analysis.collective import windows_of

    rng = np.random.default_rng(seed)
    n_windows = 3 * 144
    per = rng.poisson(100, n_windows)
    window = np.repeat(np.arange(n_windows), per)
    n = len(window)
    large = rng.random(n) < np.where(np.isin(window, list(big)), 0.6, 0.2)
    mb = np.rint(rng.lognormal(np.log(300), 1.0, n) * np.where(large, 100, 1)).astype(np.int64)
    exec_ms = 50 + mb * 2.0 * rng.lognormal(0, 1.0, n)
    exec_ms = np.rint(exec_ms * np.where(np.isin(window, list(slow)), factor, 1.0)).astype(np.int64)
    t0_us = int(T0.timestamp() * 1e6)
    arrival = t0_us + window * 600_000_000 + rng.integers(0, 600_000_000, n)
    order = np.argsort(arrival, kind="stable")
    zeros = np.zeros(n, np.int64)
    table = pa.table({
        "instance_id": np.full(n, 7, np.int64),
        "arrival_timestamp": pa.array(arrival[order], pa.timestamp("us", "UTC")),
        "cluster_size": np.full(n, 4, np.int64), "was_cached": np.zeros(n, bool), "query_type": ["select"] * n,
        "execution_duration_ms": exec_ms[order], "mbytes_scanned": mb[order], "mbytes_spilled": zeros,
        "queue_duration_ms": zeros, "num_joins": zeros, "num_aggregations": zeros, "num_scans": zeros + 1,
    })
    return windows_of(table)


def test_an_instance_running_slower_is_flagged_and_a_mix_change_is_not() -> None:
    slow, big = range(300, 305), range(310, 316)
    normal = _log(big=big)
    before = _log()
    # The mix change is material in raw runtime (the mean per query more than doubles) ...
    assert (normal["total_exec_time_ms"].iloc[310:316].sum() > 2 * before["total_exec_time_ms"].iloc[310:316].sum())
    quiet = flag_windows(normal.iloc[290:320], normal).to_pandas()
    assert not quiet["signal"].eq("exec_pace").any(), quiet  # ... but not in the time per MB
    slower = _log(slow=slow, factor=1.75, big=big)
    flagged = flag_windows(slower.iloc[290:320], slower).to_pandas()
    got = flagged[flagged["signal"] == "exec_pace"]
    assert set(got["window_start"]) == {pd.Timestamp(s) for s in slower["window_start"].iloc[300:305]}, flagged
    row = got.iloc[0]
    assert 0.4 < row["observed"] - row["expected"] < 0.75 and "per MB" in row["reason"]  # ln 1.75 = 0.56


def test_windows_stored_before_the_pace_existed_are_not_judged_on_it() -> None:
    w = _log(slow=range(300, 302), factor=2.0)
    assert flag_windows(w.iloc[300:302], w).to_pandas()["signal"].eq("exec_pace").sum() == 2
    old = w.copy()  # the same slowdown over a history written by an earlier version (NULL pace)
    old.loc[old.index[:296], ["pace_queries", "pace_log_sum"]] = None
    scored = score_windows(old.iloc[290:310], old)
    assert len(scored) and not scored["signal"].eq("exec_pace").any()  # too little history
    few = w.copy()  # a window with fewer than 50 paced queries is not judged on its pace
    few.loc[few.index[300], "pace_queries"] = 49
    assert not score_windows(few.iloc[300:301], few)["signal"].eq("exec_pace").any()


def test_a_lasting_change_just_under_the_bar_is_flagged_with_the_window_before_it() -> None:
    """Two consecutive windows at z 4.4 each (under 5): their Stouffer z 6.2 clears the pair bar (5.13)."""
    w = _windows()
    w.loc[w.index[300:302], "total_queries"] = 185  # ~2.5x the usual arrivals for 20 minutes
    flagged = flag_windows(w.iloc[290:310], w).to_pandas()
    assert list(zip(flagged["window_start"], flagged["signal"], strict=True)) == [
        (pd.Timestamp(w["window_start"].iloc[301]), "arrivals")]
    assert "window before it" in flagged["reason"].iloc[0]
    scored = score_window_runs(w.iloc[300:302], w)
    row = scored[scored["signal"] == "arrivals"]
    assert (row["z"] < 5.0).all() and row["pair_z"].iloc[1] > pair_threshold(5.0) > 5.0
    once = _windows()  # the same departure in one window only is not flagged
    once.loc[once.index[300], "total_queries"] = 185
    assert flag_windows(once.iloc[290:310], once).num_rows == 0


def test_step_judges_a_window_with_the_one_before_it_scored_in_an_earlier_run(tmp_path: Path) -> None:
    """The pair evidence depends only on the store: a window whose predecessor was scored in an
    earlier run (or before a restart) gets the flags the offline function gives."""
    settings = Settings(home=tmp_path / "home")
    w = _windows()
    w.loc[w.index[300:302], "total_queries"] = 185
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(w.iloc[:303].to_dict("records"))  # window 300 is final, 301 not yet
    step = CollectiveStep(settings)
    step.run()
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(w.iloc[303:].to_dict("records"))
    step.run()
    assert CollectiveStep(settings).run() == 0  # a restart inserts nothing new
    got = read.window_anomalies(settings, instances=[7])
    final = w.iloc[:-2]  # the last windows are not final yet (settle time)
    want = flag_windows(final, w).to_pandas()
    assert set(zip(pd.to_datetime(got["window_start"], utc=True), got["signal"], strict=True)) == set(
        zip(pd.to_datetime(want["window_start"], utc=True), want["signal"], strict=True))
    assert (pd.Timestamp(w["window_start"].iloc[301]), "arrivals") in set(
        zip(pd.to_datetime(got["window_start"], utc=True), got["signal"], strict=True))


def test_step_leaves_windows_the_analytics_app_holds_open_for_a_later_run(tmp_path: Path) -> None:
    """A message hours ahead writes a provisional window far ahead; the windows before it that are still
    filling looked final by the newest-window rule, were judged on part of their queries and never again."""
    import sqlite3

    from workbench.pipeline._window_state import WindowState

    settings = Settings(home=tmp_path / "home")
    w = _windows()
    storm = w.copy()
    storm.loc[storm.index[300:302], "queue_wlm_bound_queries"] = storm["total_queries"].iloc[300:302] // 2
    outlier = w.iloc[[420]]  # hours ahead of the stream, open like every window after 298
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(w.iloc[:303].to_dict("records"))  # 300-302 still filling: their queue storm not in yet
        store.upsert(outlier.to_dict("records"))
        WindowState(store, "analytics", window_ms=600_000, grace_ms=300_000, closing_strategy="partition").open()
    opened = (*w["window_start"].iloc[298:303], *outlier["window_start"])
    held = [int(pd.Timestamp(s).timestamp() * 1000) for s in opened]
    with sqlite3.connect(settings.sqlite_path) as db:
        db.executemany("INSERT INTO analytics_open_windows (consumer_group, topic, partition, instance_id, "
                       "window_start_ms, partial) VALUES ('analytics', 'events', 0, 7, ?, '{}')",
                       [(start,) for start in held])
    step = CollectiveStep(settings)
    step.run()
    assert step.cursor_ms[7] < held[0]  # judged up to the first window still open, not up to the outlier's
    with WindowStatsStore.from_settings(settings) as store:  # the stream reaches them: complete, closed
        store.upsert(storm.iloc[298:310].to_dict("records"))
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute("DELETE FROM analytics_open_windows WHERE window_start_ms < ?", (held[-1],))
    step.run()
    starts = set(pd.to_datetime(read.window_anomalies(settings, instances=[7])["window_start"], utc=True))
    assert {pd.Timestamp(s) for s in storm["window_start"].iloc[300:302]} <= starts


def test_every_signal_reads_in_its_own_unit_in_reasons_and_tables() -> None:
    """The window table showed raw floats in mixed units (ms, shares, logs) and reasons 1.884e+05."""
    from workbench.analysis.anomaly_summary import window_anomalies_table
    from workbench.analysis.collective import _SHOWN, SIGNALS

    assert {signal.unit for signal in SIGNALS.values()} <= set(_SHOWN)  # a new unit needs its reading
    cases = {
        ("p95_exec_ms", 188_364.9): "3.1 min", ("p95_exec_ms", 9_041.7): "9.0 s",
        ("queued_share", 0.1778): "18 %", ("queued_share", 3.187e-05): "<0.1 %", ("slow_share", 0.098): "9.8 %",
        ("arrivals", 811.6): "812 queries", ("arrivals", 1_326.0): "1,326 queries", ("cluster_size", 4.0): "4 nodes",
        ("arrivals_drop", 0.0): "0 queries", ("arrivals_drop", 1.0): "1 query", ("arrivals_drop", 2.5): "2.5 queries",
        ("exec_pace", float(np.log(1.61))): "1.61 ms per MB scanned",
        ("runtime_residual", float(np.log(1.6))): "1.60x the expected runtime",
        ("a_signal_of_a_later_version", 3.14159): "3.142", ("arrivals", float("nan")): "n/a",
    }
    for (signal, value), text in cases.items():
        assert format_signal_value(signal, value) == text, (signal, value)
    frame = pd.DataFrame({"instance_id": [7, 7], "window_start": pd.to_datetime(["2024-03-05 16:20"] * 2, utc=True),
                          "signal": ["p95_exec_ms", "queued_share"], "expected": [9_041.7, 3.187e-05],
                          "observed": [188_364.9, 0.1778], "score": [2.587806, 1.599713], "reason": ["a", "b"]})
    table = window_anomalies_table(frame)
    assert table[["observed", "expected"]].to_numpy().tolist() == [["3.1 min", "9.0 s"], ["18 %", "<0.1 %"]]
    assert table["score"].tolist() == [2.59, 1.6]
    assert window_anomalies_table(frame.iloc[:0]).empty


def test_an_instance_with_no_open_window_is_judged_while_another_holds_one_open(tmp_path: Path) -> None:
    """The first open window per instance was mapped through floats: for an instance without one the int64
    maximum became 2**63, which cast back to the int64 minimum, so its windows were never final while any
    other instance had a window open (seen once the end-of-log marker closed one partition's windows)."""
    import sqlite3

    from workbench.pipeline._window_state import WindowState

    settings = Settings(home=tmp_path / "home")
    quiet = _windows(instance=7)
    quiet.loc[quiet.index[300:302], "queue_wlm_bound_queries"] = quiet["total_queries"].iloc[300:302] // 2
    busy = _windows(seed=1, instance=8)
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(quiet.to_dict("records"))
        store.upsert(busy.to_dict("records"))
        WindowState(store, "analytics", window_ms=600_000, grace_ms=300_000, closing_strategy="partition").open()
    last = int(pd.Timestamp(busy["window_start"].iloc[-1]).timestamp() * 1000)
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute("INSERT INTO analytics_open_windows (consumer_group, topic, partition, instance_id, "
                   "window_start_ms, partial) VALUES ('analytics', 'events', 1, 8, ?, '{}')", (last,))
    step = CollectiveStep(settings)
    step.run()
    assert step.cursor_ms[8] < last and step.cursor_ms[7] > 0
    starts = set(pd.to_datetime(read.window_anomalies(settings, instances=[7])["window_start"], utc=True))
    assert {pd.Timestamp(s) for s in quiet["window_start"].iloc[300:302]} <= starts


def _stored_flags(settings: Settings) -> set[tuple]:
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        table = lake.read_window_anomalies().to_pandas()
    return {(int(r.instance_id), pd.Timestamp(r.window_start), r.signal, round(r.expected, 9), round(r.observed, 9),
             round(r.score, 9)) for r in table.itertuples()}


def test_windows_written_behind_the_judged_ones_are_judged_again_as_a_replay_without_a_seek(tmp_path: Path) -> None:
    """A seek forward skipped rows, and a seek back or a reset sent them: their windows were written after
    later windows had been judged against a history without them. A tester found a flagged window lost
    (until a restart) and two flagged that a replay without the seek does not flag (for good)."""
    windows = _windows()
    windows.loc[windows.index[300:302], "queue_wlm_bound_queries"] = windows["total_queries"].iloc[300:302] // 2
    reference = Settings(home=tmp_path / "reference")
    with WindowStatsStore.from_settings(reference) as store:
        store.upsert(windows.to_dict("records"))
    CollectiveStep(reference).run()
    expected = _stored_flags(reference)
    assert expected  # the storm at least

    seeked = Settings(home=tmp_path / "seeked")
    skipped = windows.index[40:250]  # a seek forward from day 1's 06:40 to day 2's 17:40
    with WindowStatsStore.from_settings(seeked) as store:
        store.upsert(windows.drop(skipped).to_dict("records"))
    step = CollectiveStep(seeked)
    step.run()
    before = _stored_flags(seeked)
    assert before != expected  # judged against a history without the skipped windows
    # the scoring app's flag of a window in the range judged again: not the step's to take back
    residual = pd.DataFrame({"instance_id": [7], "window_start": [windows["window_start"].iloc[260]],
                             "signal": ["runtime_residual"], "expected": [0.0], "observed": [0.7], "score": [9.0],
                             "reason": ["every query runs slower"]})
    with AnomalyLakehouse.from_settings(seeked) as lake:
        lake.write_window_anomalies(pa.Table.from_pandas(residual, schema=WINDOW_ANOMALY_SCHEMA, preserve_index=False))
    with WindowStatsStore.from_settings(seeked) as store:
        store.upsert(windows.loc[skipped].to_dict("records"))  # the reset sends them
    step.run()
    after = _stored_flags(seeked)
    window_rows = {f for f in after if f[2] != "runtime_residual"}
    assert window_rows == expected, (sorted(before ^ expected)[:5], sorted(window_rows ^ expected)[:5])
    assert any(f[2] == "runtime_residual" for f in after)
    assert step.run() == 0 and _stored_flags(seeked) == after  # nothing written since: nothing judged again
    assert CollectiveStep(seeked).run() == 0 and _stored_flags(seeked) == after  # a restart adds nothing


# --- silence: windows without a query -----------------------------------------------------------
def _fleet(days: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two instances' windows over ``days`` days: the judged one (7) and one that keeps the log going (8)."""
    return _windows(n=days * 144, instance=7), _windows(n=days * 144, seed=1, instance=8)


def _day4(w: pd.DataFrame, start: str, end: str) -> np.ndarray:
    starts = pd.to_datetime(w["window_start"], utc=True)
    return ((starts >= pd.Timestamp(f"2024-03-07 {start}", tz="UTC"))
            & (starts < pd.Timestamp(f"2024-03-07 {end}", tz="UTC"))).to_numpy()


def test_silent_windows_are_added_only_between_an_instance_s_windows_where_the_log_has_windows() -> None:
    def frame(instance: int, slots: list[int]) -> pd.DataFrame:
        starts = [T0 + timedelta(minutes=10 * k) for k in slots]
        return pd.DataFrame({"instance_id": instance, "window_start": starts,
                             "window_end": [s + timedelta(minutes=10) for s in starts], "total_queries": 5})

    # Slot 4: no instance has a window (the log's gap); slot 8: after instance 7's last window.
    both = pd.concat([frame(7, [0, 1, 2, 5, 6, 7]), frame(8, [0, 1, 2, 3, 5, 6, 7, 8])], ignore_index=True)
    filled = with_silent_windows(both)
    silent = filled[filled["total_queries"] == 0]
    assert list(zip(silent["instance_id"], silent["window_start"], strict=True)) == [
        (7, pd.Timestamp(T0 + timedelta(minutes=30)))]
    assert silent["window_end"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=40))
    assert len(filled) == len(both) + 1 and filled["window_start"].dt.tz is not None
    alone = frame(7, [0, 1, 5])
    assert len(with_silent_windows(alone)) == 3  # one instance: its gaps may be the log's own


def test_an_outage_is_flagged_on_arrivals_drop_and_nothing_else_reads_the_silent_windows() -> None:
    judged, other = _fleet()
    # Silent every night (its reference holds many empty windows: a busy hour's silence is still rare)
    judged = judged[~pd.to_datetime(judged["window_start"], utc=True).dt.hour.between(1, 4).to_numpy()]
    outage = _day4(judged, "10:00", "10:40")
    rows = pd.concat([judged[~outage], other], ignore_index=True)
    log = with_silent_windows(rows)
    today = log[(log["instance_id"] == 7) & _day4(log, "09:00", "12:00")]
    flagged = flag_windows(today, log).to_pandas()
    assert set(flagged["signal"]) == {"arrivals_drop"}
    assert set(pd.to_datetime(flagged["window_start"], utc=True)) == set(
        pd.to_datetime(judged.loc[outage, "window_start"], utc=True))
    row = flagged.iloc[0]
    assert row["observed"] == 0 and row["expected"] > 30 and "traffic" in row["reason"]
    # its evidence: both references it broke off from, in queries
    assert "observed 0 queries vs expected" in row["reason"] and " in the hour before " in row["reason"]
    # The silent windows are no share's or mean's reference: the other signals score as without them.
    before = score_windows(rows[(rows["instance_id"] == 7) & _day4(rows, "11:00", "12:00")], rows)
    after = score_windows(today[_day4(today, "11:00", "12:00")], log)
    pd.testing.assert_frame_equal(before[before["signal"] != "arrivals_drop"].reset_index(drop=True),
                                  after[after["signal"] != "arrivals_drop"].reset_index(drop=True))


def test_a_quieter_day_a_small_instance_s_silence_and_a_quiet_night_are_not_outages() -> None:
    judged, other = _fleet()
    day4 = _day4(judged, "00:00", "23:59")
    quieter = judged.copy()  # a whole day at 55 % of the traffic (a weekday cycle), from midnight on
    quieter.loc[day4, "total_queries"] = (quieter.loc[day4, "total_queries"] * 0.55).astype(int)
    small = judged.copy()  # an instance of 10 queries a window, silent for 40 minutes: not 30 queries
    small["total_queries"] = np.maximum(small["total_queries"] // 6, 1)
    small = small[~_day4(small, "10:00", "10:40")]
    night = judged.copy()  # silent every night from 01:00 to 05:00, tonight too
    hours = pd.to_datetime(night["window_start"], utc=True).dt.hour
    night = night[~hours.between(1, 4).to_numpy()]
    for case in (quieter, small, night):
        log = with_silent_windows(pd.concat([case, other], ignore_index=True))
        today = log[(log["instance_id"] == 7) & _day4(log, "00:00", "23:59")]
        scored = score_window_runs(today, log)
        drop = scored[scored["signal"] == "arrivals_drop"]
        assert len(drop) > 100 and (drop["score"] < 1).all(), drop.sort_values("score").tail()


def _between(w: pd.DataFrame, start: str, end: str) -> np.ndarray:
    starts = pd.to_datetime(w["window_start"], utc=True)
    return ((starts >= pd.Timestamp(start, tz="UTC")) & (starts < pd.Timestamp(end, tz="UTC"))).to_numpy()


def test_a_long_outage_is_flagged_while_it_lasts_through_hours_that_are_busy_as_a_rule() -> None:
    """Tester D (35th session): a 4-hour pause was flagged in its first hour only (6 of 24 windows): from
    its second hour on, the hour before held no traffic. A silent window's hour before is now the hour
    before its instance fell silent; the usual (the same hour on earlier days) still has its say."""
    judged, other = _fleet(days=5)
    night = pd.to_datetime(judged["window_start"], utc=True).dt.hour.between(1, 4).to_numpy()
    judged = judged[~night]  # silent every night from 01:00 to 05:00
    long_day = _between(judged, "2024-03-07 08:00", "2024-03-07 14:00")
    overnight = _between(judged, "2024-03-07 23:00", "2024-03-08 07:00")
    log = with_silent_windows(pd.concat([judged[~(long_day | overnight)], other], ignore_index=True))
    today = log[(log["instance_id"] == 7) & _between(log, "2024-03-07 00:00", "2024-03-08 12:00")]
    flagged = flag_windows(today, log).to_pandas()
    assert set(flagged["signal"]) == {"arrivals_drop"}
    starts = set(pd.to_datetime(flagged["window_start"], utc=True))
    six_hours = set(pd.to_datetime(judged.loc[long_day, "window_start"], utc=True))
    assert six_hours <= starts and len(six_hours) == 36
    # Overnight: the hour before midnight and the early morning, not the hours it is silent every night.
    hours = {s.hour for s in starts - six_hours}
    assert {23, 0, 5, 6} <= hours and not hours & {1, 2, 3, 4} and len(starts - six_hours) == 24, sorted(starts)
    late = flagged[pd.to_datetime(flagged["window_start"], utc=True) == pd.Timestamp("2024-03-07 13:50", tz="UTC")]
    assert " in the hour before the instance fell silent " in late["reason"].iloc[0]
    assert late["observed"].iloc[0] == 0 and late["expected"].iloc[0] > 45


def test_clients_cut_off_for_hours_are_compared_with_the_traffic_they_broke_off_from() -> None:
    """Tester D (36th session): with 60-90 % of an instance's traffic gone for hours, only the first hour
    was flagged (21 of 134 windows): from the second hour on, the hour before was the fallen traffic.
    A drop that goes on is compared with the hour before it began, if it began up to ``drop_memory``
    (one hour) before the window."""
    judged, other = _fleet(days=5)
    cut = _between(judged, "2024-03-07 08:00", "2024-03-07 11:00")
    judged.loc[cut, "total_queries"] = (judged.loc[cut, "total_queries"] * 0.2).astype(int)  # 80 % gone
    log = with_silent_windows(pd.concat([judged, other], ignore_index=True))
    today = log[(log["instance_id"] == 7) & _between(log, "2024-03-07 06:00", "2024-03-07 13:00")]
    flagged = flag_windows(today, log).to_pandas()
    drops = flagged[flagged["signal"] == "arrivals_drop"]
    starts = set(pd.to_datetime(drops["window_start"], utc=True))
    first_80_minutes = set(pd.date_range("2024-03-07 08:00", "2024-03-07 09:20", freq="10min", tz="UTC"))
    assert first_80_minutes <= starts, sorted(starts)
    late = drops[pd.to_datetime(drops["window_start"], utc=True) == pd.Timestamp("2024-03-07 09:10", tz="UTC")]
    # Its own hour before (08:10-09:10) is cut too: its evidence is the level before 08:00.
    assert " in the hour before the traffic fell (" in late["reason"].iloc[0]
    level = float(late["reason"].iloc[0].split(", and ")[1].split(" queries")[0].replace(",", ""))
    assert level > 3 * late["observed"].iloc[0]
    # Judged against its own hour before only (no memory), the windows from 08:40 on are not flagged.
    alone = flag_windows(today, log, CollectiveParams(drop_memory=timedelta(0))).to_pandas()
    alone_starts = set(pd.to_datetime(alone.loc[alone["signal"] == "arrivals_drop", "window_start"], utc=True))
    assert alone_starts and not alone_starts & set(
        pd.date_range("2024-03-07 08:40", "2024-03-07 09:20", freq="10min", tz="UTC"))


def test_a_smaller_instance_that_stops_is_flagged_and_the_same_loss_of_traffic_that_goes_on_is_not() -> None:
    """An instance of about 20 queries a window (under the drop's floor of 30) that stops altogether is
    unavailable: a window without any query has the floor of 15. Traffic that falls by as much without
    stopping keeps the floor of 30 (tester D, 35th session: a small instance's outage 0/4)."""
    judged, other = _fleet()
    judged["total_queries"] = np.maximum(judged["total_queries"] // 3, 1)
    outage = _day4(judged, "05:00", "05:40")  # its busy hours: about 30 a window
    stopped = with_silent_windows(pd.concat([judged[~outage], other], ignore_index=True))
    today = stopped[(stopped["instance_id"] == 7) & _day4(stopped, "03:00", "08:00")]
    flagged = flag_windows(today, stopped).to_pandas()
    assert set(pd.to_datetime(flagged["window_start"], utc=True)) == set(
        pd.to_datetime(judged.loc[outage, "window_start"], utc=True))
    fewer = judged.copy()  # the same windows with a query or two left: no stop, and not 30 queries fewer
    fewer.loc[outage, "total_queries"] = 2
    log = with_silent_windows(pd.concat([fewer, other], ignore_index=True))
    scored = score_window_runs(log[(log["instance_id"] == 7) & _day4(log, "03:00", "08:00")], log)
    assert (scored["score"] < 1).all(), scored.sort_values("score").tail()


def test_step_flags_an_outage_the_store_has_no_row_for_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    judged, other = _fleet()
    outage = _day4(judged, "10:00", "10:30")
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(judged[~outage].to_dict("records"))
        store.upsert(other.to_dict("records"))
    inserted = CollectiveStep(settings).run()
    frame = read.window_anomalies(settings, instances=[7])
    drops = frame[frame["signal"] == "arrivals_drop"]
    assert set(pd.to_datetime(drops["window_start"], utc=True)) == set(
        pd.to_datetime(judged.loc[outage, "window_start"], utc=True))
    assert inserted == len(read.window_anomalies(settings))
    assert CollectiveStep(settings).run() == 0  # a restart judges them again and inserts nothing


def test_the_first_window_back_after_an_outage_is_not_carried_by_the_outage_s_window() -> None:
    """Tester D (35th session): the window after an outage, back at three quarters of its usual traffic,
    was flagged "together z 40" with the outage's last window; each window's z now counts up to the bar."""
    judged, other = _fleet()
    outage = _day4(judged, "10:00", "10:40")
    back = _day4(judged, "10:40", "10:50")
    judged.loc[back, "total_queries"] = (judged.loc[back, "total_queries"] * 0.75).astype(int)
    log = with_silent_windows(pd.concat([judged[~outage], other], ignore_index=True))
    today = log[(log["instance_id"] == 7) & _day4(log, "09:00", "12:00")]
    scored = score_window_runs(today, log)
    drop = scored[scored["signal"] == "arrivals_drop"].set_index("window_start")
    after = pd.Timestamp("2024-03-07 10:40", tz="UTC")
    assert drop.loc[after, "z"] < 5 and drop.loc[after, "pair_z"] <= 2 * 5 / np.sqrt(2)
    assert drop.loc[after, "score"] < 1
    assert (drop.loc[pd.to_datetime(judged.loc[outage, "window_start"], utc=True), "score"] >= 1).all()
