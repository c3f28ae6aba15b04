"""The runtime-residual window signal: per-window medians from scored rows, judged against the instance's history."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.helpers import store_generated_days
from workbench.analysis.collective import WINDOW_ANOMALY_SCHEMA
from workbench.analysis.residual_windows import (
    RESIDUAL_SIGNAL,
    RESIDUAL_SIGNALS,
    TOLERANCE_SIGNAL,
    judge_residual_windows,
    residual_windows,
)
from workbench.config import Settings
from workbench.ml._train import train_table
from workbench.ml.scorer import Scorer
from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._residuals import ResidualWindowsStep
from workbench.store.shards import read_window, rescore_unscored
from workbench.store.window_stats import WindowStatsStore

T0 = datetime(2024, 3, 4, tzinfo=UTC)
DAY_MS = 86_400_000
WINDOW_MS = 600_000


def _rows(days: int = 4, per_window: int = 60, seed: int = 0, slow: tuple[int, int] | None = None,
          factor: float = 1.0, big_share: dict[int, float] | None = None, instance: int = 7,
          slow_part: float = 1.0) -> pa.Table:
    """Scored rows of one instance: small (~100 ms) and large (~5 s) queries, runtime ~ expectation x lognormal.

    ``slow``: windows [a, b) run ``factor`` x slower than the model expects (``slow_part`` of their
    queries, at random; all by default); ``big_share``: per window, the share of large queries
    (default 0.2): a mix change the model explains. The model's tolerance (``pred_q_ms``) is the
    runtime noise's 90th percentile.
    """
    rng = np.random.default_rng(seed)
    n_win = days * 144
    counts = rng.poisson(per_window, n_win)
    win = np.repeat(np.arange(n_win), counts)
    n = len(win)
    share = np.full(n_win, 0.2)
    for w, s in (big_share or {}).items():
        share[w] = s
    big = rng.random(n) < share[win]
    pred = np.where(big, 5_000.0, 100.0) * rng.lognormal(0.0, 0.3, n)
    runtime = pred * rng.lognormal(0.0, 0.5, n)
    if slow is not None:
        part = rng.random(n) < slow_part if slow_part < 1.0 else np.ones(n, dtype=bool)  # the same draws as before
        runtime = np.where((win >= slow[0]) & (win < slow[1]) & part, runtime * factor, runtime)
    arrival_ms = int(T0.timestamp() * 1000) + win * WINDOW_MS + rng.integers(0, WINDOW_MS, n)
    cached = rng.random(n) < 0.1
    return pa.table({
        "instance_id": pa.array(np.full(n, instance), pa.int64()),
        "arrival_timestamp": pa.array(arrival_ms * 1000, pa.int64()).cast(pa.timestamp("us", "UTC")),
        "execution_duration_ms": pa.array(np.where(cached, 0, np.round(runtime)).astype(np.int64)),
        "was_cached": pa.array(cached), "was_aborted": pa.array(np.zeros(n, bool)),
        "pred_mean_ms": pa.array(pred), "pred_q_ms": pa.array(pred * np.exp(1.2816 * 0.5)),
        "model_version": pa.array(["v1-2024-03-03"] * n),
    })


def _flagged_windows(rows: pa.Table, first_judged: int = 3 * 144, signals: tuple[str, ...] = RESIDUAL_SIGNALS
                     ) -> set[int]:
    w = residual_windows(rows)
    judged = w[w["window_start"] >= pd.Timestamp(T0) + pd.Timedelta(minutes=10 * first_judged)]
    flagged = judge_residual_windows(judged, w).to_pandas()
    assert set(flagged["signal"]) <= set(RESIDUAL_SIGNALS)
    flagged = flagged[flagged["signal"].isin(signals)]
    return {int((t - pd.Timestamp(T0)) / pd.Timedelta(minutes=10)) for t in flagged["window_start"]}


def test_windows_align_with_the_stream_windows_and_count_only_executed_scored_queries() -> None:
    rows = _rows(days=1)
    w = residual_windows(rows)
    cached = rows.column("was_cached").to_numpy(zero_copy_only=False)
    assert int(w["residual_queries"].sum()) == int((~cached).sum())
    assert (pd.DatetimeIndex(w["window_start"]).as_unit("ms").asi8 % WINDOW_MS == 0).all()
    assert w["median_log_residual"].abs().median() < 0.1  # runtimes follow the expectation


def test_an_instance_running_slower_than_the_model_expects_is_flagged() -> None:
    slow = (3 * 144 + 60, 3 * 144 + 64)  # 40 minutes of day 4, every query 2x slower
    assert _flagged_windows(_rows(slow=slow, factor=2.0)) == set(range(*slow))
    table = judge_residual_windows(residual_windows(_rows(slow=slow, factor=2.0)).iloc[3 * 144 + 60:3 * 144 + 61],
                                   residual_windows(_rows(slow=slow, factor=2.0)))
    assert table.schema == WINDOW_ANOMALY_SCHEMA
    row = next(r for r in table.to_pylist() if r["signal"] == RESIDUAL_SIGNAL)
    assert 0.5 < row["observed"] - row["expected"] < 0.9  # ln 2 = 0.69
    assert "x its expected runtime" in row["reason"] and "queries" in row["reason"]


def test_an_unshifted_instance_and_a_mix_change_the_model_explains_are_not_flagged() -> None:
    mix = {w: 0.9 for w in range(3 * 144 + 60, 3 * 144 + 70)}  # most queries large: raw runtime up ~4x
    rows = _rows(big_share=mix)
    runtime = residual_windows(rows)
    assert len(runtime) == 4 * 144
    assert _flagged_windows(_rows()) == set()
    assert _flagged_windows(rows) == set()


def test_a_part_of_the_workload_running_slower_is_flagged_by_the_share_past_the_tolerance() -> None:
    """40 % of the queries 4x slower for 40 minutes: the median stays under its bar, the share past q90 does not."""
    slow = (3 * 144 + 60, 3 * 144 + 64)
    rows = _rows(slow=slow, factor=4.0, slow_part=0.4)
    assert _flagged_windows(rows, signals=(RESIDUAL_SIGNAL,)) == set()
    assert _flagged_windows(rows, signals=(TOLERANCE_SIGNAL,)) == set(range(*slow))
    w = residual_windows(rows)
    inside = w.iloc[slow[0]:slow[1]]
    share = inside["beyond_tolerance_queries"] / inside["residual_queries"]
    assert (share > 0.25).all() and (w["beyond_tolerance_queries"] / w["residual_queries"]).median() < 0.15
    row = next(r for r in judge_residual_windows(w.iloc[slow[0]:slow[0] + 1], w).to_pylist()
               if r["signal"] == TOLERANCE_SIGNAL)
    assert row["observed"] > 0.25 and 0.05 < row["expected"] < 0.15
    assert "past the model's tolerance" in row["reason"] and "queries" in row["reason"]


def test_a_slowdown_that_is_also_below_the_floor_is_not_flagged() -> None:
    slow = (3 * 144 + 60, 3 * 144 + 64)  # 1.25x: significant over 40 queries, but under ln 1.5
    assert _flagged_windows(_rows(slow=slow, factor=1.25)) == set()


def test_windows_with_too_few_judged_queries_are_not_judged() -> None:
    slow = (3 * 144 + 60, 3 * 144 + 64)
    assert _flagged_windows(_rows(slow=slow, factor=2.0, per_window=12)) == set()
    assert _flagged_windows(_rows(slow=slow, factor=2.0, per_window=30)) == set(range(*slow))


def test_the_tolerance_share_of_small_windows_is_no_reference() -> None:
    """At five judged queries a window and one in ten past the tolerance, most windows hold none: their
    median share, 0, made an ordinary window of 14 queries with 10 past the tolerance look like a storm."""
    w = residual_windows(_rows(per_window=5))
    target = w.iloc[[3 * 144 + 60]].assign(residual_queries=14, beyond_tolerance_queries=10)
    assert judge_residual_windows(target, w).num_rows == 0  # neither judged (14 < 20) nor against that median
    busy = residual_windows(_rows(per_window=60))
    judged = busy.iloc[[3 * 144 + 60]].assign(residual_queries=30, beyond_tolerance_queries=20)
    assert judge_residual_windows(judged, busy).column("signal").to_pylist() == [TOLERANCE_SIGNAL]


def test_windows_with_unscored_rows_are_left_for_later() -> None:
    slow = (3 * 144 + 60, 3 * 144 + 64)
    rows = _rows(slow=slow, factor=2.0)
    arrival = pd.DatetimeIndex(rows.column("arrival_timestamp").to_numpy(zero_copy_only=False))
    window = ((arrival - pd.Timestamp(T0).tz_localize(None)) // pd.Timedelta(minutes=10)).to_numpy()
    versions = np.where(window == slow[0], None, "v1-2024-03-03")  # one slow window partly stored unscored
    rows = rows.set_column(rows.schema.get_field_index("model_version"), "model_version", pa.array(versions))
    w = residual_windows(rows)
    assert int(w.loc[w["unscored_queries"] > 0, "window_start"].size) == 1
    assert _flagged_windows(rows) == set(range(slow[0] + 1, slow[1]))


def test_the_same_rows_in_any_order_give_the_same_windows_and_flags() -> None:
    rows = _rows(slow=(3 * 144 + 60, 3 * 144 + 64), factor=2.0)
    shuffled = rows.take(np.random.default_rng(1).permutation(rows.num_rows))
    pd.testing.assert_frame_equal(residual_windows(rows), residual_windows(shuffled))
    a, b = residual_windows(rows), residual_windows(shuffled)
    assert judge_residual_windows(a.iloc[3 * 144:], a).equals(judge_residual_windows(b.iloc[3 * 144:], b))


def test_the_status_line_counts_the_scoring_app_s_flagged_windows_with_the_analytics_app_s() -> None:
    from workbench.runtime._status import WorkbenchStatus

    def status(apps: dict, instances: dict) -> WorkbenchStatus:
        return WorkbenchStatus(replay=None, processes={}, apps=apps, lag={}, model_version=None, model_versions=0,
                               anomalies=None, late_events=None, dead_letters=None, instances=instances)

    scoring = [{"counters": {"window_anomalies": 2}}, {"counters": {"window_anomalies": 1}}]  # two scoring slots
    both = status({"analytics": {"counters": {"window_anomalies": 4}}, "scoring": scoring[0]}, {"scoring": scoring})
    assert both.window_anomalies == 7 and "flagged windows 7" in str(both)
    assert status({}, {}).window_anomalies is None
    # After a restart the counters start again at 0 while the lakehouse holds every run's, as `anomalies`
    # counts them: the stored count is the one shown.
    restarted = status({"analytics": {"counters": {"window_anomalies": 0}}}, {})
    object.__setattr__(restarted, "stored_window_anomalies", 3)
    assert restarted.window_anomalies == 3 and "flagged windows 3" in str(restarted)


def test_statements_the_model_has_no_history_of_are_not_judged() -> None:
    rows = _rows()
    w = residual_windows(rows)
    target = 3 * 144 + 60  # one window: its first 60 % of queries are never-seen statements, 30x their prior
    start = pd.Timestamp(T0) + pd.Timedelta(minutes=10 * target)
    arrival = pd.DatetimeIndex(rows.column("arrival_timestamp").to_numpy(zero_copy_only=False)).tz_localize("UTC")
    inside = np.flatnonzero((arrival >= start) & (arrival < start + pd.Timedelta(minutes=10)))
    unknown = np.zeros(rows.num_rows, dtype=bool)
    unknown[inside[: int(0.6 * len(inside))]] = True
    runtime = rows.column("execution_duration_ms").to_numpy().copy()
    runtime[unknown] *= 30
    burst = rows.set_column(rows.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                            pa.array(runtime))
    assert _flagged_windows(burst) == {target}  # every statement judged: the burst moves the median
    judged = residual_windows(burst, known=~unknown)
    row = judged[judged["window_start"] == start].iloc[0]
    executed = runtime > 0  # not a result-cache hit
    assert row["residual_queries"] == int((executed & ~unknown)[inside].sum()) > 20
    assert w[w["window_start"] == start]["residual_queries"].iloc[0] == int(executed[inside].sum())
    assert judge_residual_windows(judged.iloc[3 * 144:], judged).num_rows == 0


def test_the_step_stores_a_scored_day_and_leaves_one_this_instance_still_rescores(tmp_path: Path) -> None:
    """A settled, wholly scored day is stored; listed in this instance's unscored days, it waits unread."""
    d1 = dt.date(2024, 3, 4)
    d2 = d1 + dt.timedelta(days=1)
    settings = store_generated_days(Settings(home=tmp_path / "home"), days=2, start=d1, rows_per_day=3000)
    train_table(settings.models_dir, read_window(settings.shards_dir, d1, d1), d1, window_days=1)
    assert rescore_unscored(settings.shards_dir, Scorer(settings.models_dir, background=False), [d2]) > 0

    waiting = {d2.isoformat()}
    step = ResidualWindowsStep(settings, AppStatus(settings, "scoring"), waiting_days=lambda: set(waiting))
    assert step.run(watermark=d2 + dt.timedelta(days=1)) == 0  # day 1 has no scores (no version before it)
    assert step.pending == d1

    rescore_unscored(settings.shards_dir, Scorer(settings.models_dir, background=False), [d1])
    assert step.run(watermark=d2 + dt.timedelta(days=1)) == 1  # day 1 now; day 2 is still listed as waiting
    assert step.pending == d2
    waiting.clear()
    assert step.run(watermark=d2 + dt.timedelta(days=1)) == 1
    with WindowStatsStore.from_settings(settings) as store:
        stored = store.read_residuals().to_pandas()
    assert sorted({ts.date() for ts in stored["window_start"]}) == [d1, d2]
    assert (stored["residual_queries"] > 0).any()


def test_a_day_s_first_window_is_judged_with_the_whole_reference_of_the_window_before_it(tmp_path: Path) -> None:
    """The pair test scores the previous day's last window too: the step reads its reference whole.

    With a 27-hour lookback and ``min_history`` 156 the window before the day has exactly that many
    reference windows (26 hours: the last hour is left out); a history read from ``day - lookback`` left
    it 155, unjudged, so the slowdown over the two windows (each under the bar alone) went unflagged on
    the streaming path while the offline answer flags it. (The lookback spans more than a day: a level
    is judged only against a reference that holds an earlier day.)
    """
    from workbench.analysis.collective import CollectiveParams

    params = CollectiveParams(lookback=dt.timedelta(hours=27), min_history=156)
    windows = residual_windows(_rows(days=3, per_window=30, slow=(287, 289), factor=1.55)).drop(
        columns="unscored_queries")
    day = dt.date(2024, 3, 6)
    first = windows["window_start"] >= pd.Timestamp(day, tz="UTC")
    settings = Settings(home=tmp_path / "home")
    with WindowStatsStore.from_settings(settings) as store:
        store.insert_residuals(windows[~first])
        step = ResidualWindowsStep(settings, AppStatus(settings, "scoring"), params=params)
        streamed = step.judge_day(store, day, windows[first]).to_pandas()
    offline = judge_residual_windows(windows[first], windows, params).to_pandas()
    median = offline[offline["signal"] == RESIDUAL_SIGNAL]
    assert list(median["window_start"]) == [pd.Timestamp(day, tz="UTC")]  # flagged only with the window before
    assert "so is the window before it" in median["reason"].iloc[0]
    pd.testing.assert_frame_equal(streamed, offline)


def _store_days_with_a_corrupt_duration(settings: Settings, start: dt.date, days: int) -> None:
    """Like :func:`tests.helpers.store_generated_days`, with one executed row of the second day running
    2**63 - 1 ms (a value validation and the event contract accept)."""
    from datetime import timedelta

    from workbench.data.schema import COLUMNS
    from workbench.ml._testing import day_slice, generated_log
    from workbench.store.shards import write_shard

    log = generated_log(days=days, rows_per_day=3000, seed=3, start=start).select(list(COLUMNS))
    offset = 0
    for k in range(days):
        part = day_slice(log, start + timedelta(days=k))
        if k == 1:
            runtime = part.column("execution_duration_ms").to_numpy(zero_copy_only=False).copy()
            runtime[int(np.flatnonzero(runtime > 0)[0])] = 2**63 - 1
            part = part.set_column(part.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                                   pa.array(runtime, pa.int64()))
        n = part.num_rows
        part = part.append_column("kafka_partition", pa.array([0] * n, pa.int32()))
        part = part.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))
        write_shard(settings.shards_dir, start + timedelta(days=k), 0, offset, part)
        offset += n


def _scored_days(tmp_path: Path, n: int) -> tuple[Settings, list[dt.date], AppStatus, ResidualWindowsStep]:
    """``n`` stored days from 2024-03-04 (one row of a corrupt duration), scored by a version of the first,
    and a residual step over them."""
    d1 = dt.date(2024, 3, 4)
    settings = Settings(home=tmp_path / "home")
    _store_days_with_a_corrupt_duration(settings, d1, n)
    train_table(settings.models_dir, read_window(settings.shards_dir, d1, d1), d1, window_days=1)
    days = [d1 + dt.timedelta(days=k) for k in range(n)]
    assert rescore_unscored(settings.shards_dir, Scorer(settings.models_dir, background=False), days) > 0
    status = AppStatus(settings, "scoring")
    return settings, days, status, ResidualWindowsStep(settings, status)


def test_a_corrupt_duration_is_judged_and_a_day_that_keeps_failing_is_given_up_on_not_blocking_later_days(
        tmp_path: Path, monkeypatch) -> None:
    """One row of 2**63 - 1 ms stopped the judging of its day and of every later one, retried every two
    seconds for ever, with every process 'running' in the status."""
    from workbench.pipeline.scoring import _residuals
    from workbench.runtime._status import WorkbenchStatus

    settings, days, status, step = _scored_days(tmp_path, 4)
    assert step.run(watermark=days[1] + dt.timedelta(days=1)) == 2  # the corrupt day is judged like any other

    # A day no pass can take (injected: a store that refuses its history) is tried again while it may be
    # transient, then named and skipped: the days after it are judged.
    now = [1000.0]
    monkeypatch.setattr(_residuals.time, "monotonic", lambda: now[0])
    judge = ResidualWindowsStep.judge_day

    def refuse_day_3(self, store, day, windows):
        if day == days[2]:
            raise RuntimeError("cannot read the history of 2024-03-06")
        return judge(self, store, day, windows)

    monkeypatch.setattr(ResidualWindowsStep, "judge_day", refuse_day_3)
    attempts = _residuals.GIVE_UP_AFTER
    for attempt in range(attempts):
        now[0] += 20.0
        try:
            stored = step.run(watermark=days[3] + dt.timedelta(days=1))
        except RuntimeError:
            assert attempt < attempts - 1 and "judging_failed" not in status.info
        else:
            assert attempt == attempts - 1 and stored == 1  # the day after the given-up one
    assert status.info["judging_failed"] == {"2024-03-06": "RuntimeError: cannot read the history of 2024-03-06"}
    assert step.pending is None and step.done_through == days[3]
    with WindowStatsStore.from_settings(settings) as store:
        judged = {ts.date() for ts in store.read_residuals().to_pandas()["window_start"]}
    assert judged == {days[0], days[1], days[3]}
    shown = WorkbenchStatus(replay=None, processes={}, apps={"scoring": {"info": dict(status.info)}}, lag={},
                            model_version=None, model_versions=0, anomalies=None, late_events=None,
                            dead_letters=None)
    assert "judging failed, days left unjudged: 2024-03-06 (RuntimeError" in str(shown)
    assert shown.as_dict()["failed_judging"] == {"2024-03-06": "RuntimeError: cannot read the history of 2024-03-06"}


def test_a_busy_lakehouse_is_waited_out_and_never_makes_a_day_given_up(tmp_path: Path, monkeypatch) -> None:
    """A tester held the lakehouse's write lock for 100 s: every attempt failed, and two minutes of it would
    have left the day's residual windows unjudged for good, as a day whose rows no step can take."""
    from workbench.pipeline.scoring import _residuals
    from workbench.store.exceptions import LakehouseBusyError

    settings, days, status, step = _scored_days(tmp_path, 3)
    now = [1000.0]
    monkeypatch.setattr(_residuals.time, "monotonic", lambda: now[0])
    judge, busy = ResidualWindowsStep.judge_day, [True]

    def locked(self, store, day, windows):
        if busy[0]:
            raise LakehouseBusyError("the lakehouse catalog is locked")
        return judge(self, store, day, windows)

    monkeypatch.setattr(ResidualWindowsStep, "judge_day", locked)
    for _ in range(3 * _residuals.GIVE_UP_AFTER):
        now[0] += 30.0
        with pytest.raises(LakehouseBusyError):
            step.run(watermark=days[2])
    assert "judging_failed" not in status.info and step.pending == days[0]
    busy[0] = False
    now[0] += 30.0
    assert step.run(watermark=days[2]) == 2 and "judging_failed" not in status.info
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        stored = store.read_residuals().to_pandas()
    assert sorted(set(pd.to_datetime(stored["window_start"]).dt.date)) == days[:2]


def test_days_scored_by_a_version_deleted_since_are_judged_without_its_histories(tmp_path: Path) -> None:
    """A tester deleted the version folder that had scored a day (`rm -rf`, or `models prune`): judging that
    day raised ModelNotFoundError every two seconds (30 tracebacks), then left it unjudged."""
    import shutil

    d1 = dt.date(2024, 3, 4)
    settings = Settings(home=tmp_path / "home")
    _store_days_with_a_corrupt_duration(settings, d1, 3)
    version = train_table(settings.models_dir, read_window(settings.shards_dir, d1, d1), d1, window_days=1).version
    days = [d1 + dt.timedelta(days=k) for k in range(3)]
    assert rescore_unscored(settings.shards_dir, Scorer(settings.models_dir, background=False), days) > 0
    shutil.rmtree(settings.models_dir / "versions" / version)
    status = AppStatus(settings, "scoring")
    step = ResidualWindowsStep(settings, status)
    assert step.run(watermark=days[2]) == 2 and "judging_failed" not in status.info
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        stored = store.read_residuals().to_pandas()
    assert sorted(set(pd.to_datetime(stored["window_start"]).dt.date)) == days[:2]
    assert (stored["residual_queries"] == 0).all()  # no statement history to judge against: none judged


def test_rows_no_rescoring_will_take_hold_the_judging_only_for_a_while(tmp_path: Path, monkeypatch) -> None:
    """A version deleted while it rescored its day left 404,525 rows unscored: that day waited for them, and
    every later day with it, for good (no residual window stored for any day, a log line every 2 s)."""
    from workbench.pipeline.scoring import _residuals
    from workbench.runtime._status import WorkbenchStatus

    d1 = dt.date(2024, 3, 4)
    settings = Settings(home=tmp_path / "home")
    store_generated_days(settings, days=3, start=d1)
    train_table(settings.models_dir, read_window(settings.shards_dir, d1, d1), d1, window_days=1)
    days = [d1 + dt.timedelta(days=k) for k in range(3)]
    assert rescore_unscored(settings.shards_dir, Scorer(settings.models_dir, background=False), days[1:]) > 0
    now = [1000.0]
    monkeypatch.setattr(_residuals.time, "monotonic", lambda: now[0])
    status = AppStatus(settings, "scoring")
    step = ResidualWindowsStep(settings, status)
    assert step.run(watermark=days[2]) == 0  # day 1's rows are unscored, and no rescoring of them is due
    now[0] += _residuals.UNSCORED_WAIT_S - 1
    assert step.run(watermark=days[2]) == 0
    now[0] += 1
    assert step.run(watermark=days[2]) == 2  # judged without them; day 2 goes on
    n = status.info["judged_with_unscored"]["2024-03-04"]  # its executed rows (cache hits are not judged)
    rows = read_window(settings.shards_dir, d1, d1).num_rows
    assert 0.5 * rows < n < rows
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        stored = store.read_residuals().to_pandas()
    assert sorted(set(pd.to_datetime(stored["window_start"]).dt.date)) == days[:2]
    shown = WorkbenchStatus(replay=None, processes={}, apps={"scoring": status.snapshot()}, lag={},
                            model_version=None, model_versions=0, anomalies=None, late_events=None, dead_letters=None)
    assert f"rows left unscored, judged without them: 2024-03-04 ({n:,} rows)" in str(shown)
