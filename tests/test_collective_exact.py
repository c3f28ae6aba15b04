"""The fast collective scoring gives the straightforward per-window computation's rows, bit for bit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.collective_reference import reference_score_windows
from workbench.analysis import collective
from workbench.analysis.collective import (
    CollectiveParams,
    flag_windows,
    score_windows,
    windows_of,
    with_silent_windows,
)
from workbench.data.generator import generate


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Eight generated days of two instances (a week and a day: same-hour-of-week references exist), with
    the windows each had no query in (``arrivals_drop`` reads them): the busier one is silent three hours,
    and loses 80 % of its traffic for two the day before."""
    path = Path(tmp_path_factory.mktemp("log")) / "log.parquet"
    generate(path, days=8, instances=2, seed=5, rows_per_day=20_000)
    table = pq.read_table(path)
    busier = pc.mode(table.column("instance_id")).field("mode")[0]
    ts = table.column("arrival_timestamp")
    outage = pc.and_(pc.equal(table.column("instance_id"), busier),
                     pc.and_(pc.greater_equal(ts, pa.scalar(datetime(2024, 3, 11, 9, tzinfo=UTC), ts.type)),
                             pc.less(ts, pa.scalar(datetime(2024, 3, 11, 12, 0, tzinfo=UTC), ts.type))))
    # the day before: 80 % of its queries cut off for two hours (a drop that goes on)
    cut = pc.and_(pc.equal(table.column("instance_id"), busier),
                  pc.and_(pc.greater_equal(ts, pa.scalar(datetime(2024, 3, 10, 13, tzinfo=UTC), ts.type)),
                          pc.less(ts, pa.scalar(datetime(2024, 3, 10, 15, 0, tzinfo=UTC), ts.type))))
    cut = pc.and_(cut, pa.array(np.arange(table.num_rows) % 5 != 0))
    windows = with_silent_windows(windows_of(table.filter(pc.invert(pc.or_(outage, cut)))))
    assert (windows["total_queries"] == 0).sum() >= 4
    return windows


def _between(w: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    starts = pd.to_datetime(w["window_start"], utc=True)
    return w[(starts >= pd.Timestamp(start, tz="UTC")) & (starts < pd.Timestamp(end, tz="UTC"))]


@pytest.mark.parametrize(("start", "end", "params"), [
    # the last two days against the whole history: same hour of the week in the week before
    ("2024-03-10", "2024-03-12", CollectiveParams()),
    # a short lookback: windows leave the reference as the targets move on
    ("2024-03-06T12:00", "2024-03-08", CollectiveParams(lookback=timedelta(days=2))),
])
def test_scores_and_flags_are_the_reference_computation_s(windows: pd.DataFrame, start: str, end: str,
                                                           params: CollectiveParams,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    targets = _between(windows, start, end)
    got = score_windows(targets, windows, params)
    want = reference_score_windows(targets, windows, params)
    assert len(want) > 1000
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    flagged = flag_windows(targets, windows, params)
    monkeypatch.setattr(collective, "score_windows", reference_score_windows)
    assert flagged.num_rows and flagged.equals(flag_windows(targets, windows, params))  # the reason text too
    if params == CollectiveParams():  # the outage and the cut of the fixture
        assert "arrivals_drop" in flagged.column("signal").to_pylist()
        reasons = [r for s, r in zip(flagged.column("signal").to_pylist(), flagged.column("reason").to_pylist(),
                                     strict=True) if s == "arrivals_drop"]
        assert any("in the hour before the traffic fell" in r for r in reasons), reasons


def test_runtime_residual_windows_score_and_read_as_the_reference_s(windows: pd.DataFrame,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring app's residual windows: a signal over its own query count, with its own reason text."""
    rng = np.random.default_rng(1)
    w = windows.assign(median_log_residual=rng.normal(0.0, 0.1, len(windows)),
                       residual_queries=rng.integers(0, 80, len(windows)).astype(float))
    w.loc[w.sample(frac=0.05, random_state=1).index, "median_log_residual"] = np.nan  # windows not scored yet
    slow = _between(w, "2024-03-11T09:00", "2024-03-11T10:00").index
    w.loc[slow, "median_log_residual"] += 1.0
    w.loc[slow, "residual_queries"] = 60.0
    targets = _between(w, "2024-03-10T12:00", "2024-03-11T12:00")
    pd.testing.assert_frame_equal(score_windows(targets, w), reference_score_windows(targets, w), check_exact=True)
    flagged = flag_windows(targets, w)
    assert "runtime_residual" in flagged["signal"].to_pylist()
    monkeypatch.setattr(collective, "score_windows", reference_score_windows)
    assert flagged.equals(flag_windows(targets, w))


def test_a_window_scored_with_its_neighbours_or_alone_scores_the_same(windows: pd.DataFrame) -> None:
    targets = _between(windows, "2024-03-11T08:00", "2024-03-11T10:00")
    together = score_windows(targets, windows)
    alone = pd.concat([score_windows(targets.iloc[[i]], windows) for i in range(len(targets))])
    pd.testing.assert_frame_equal(together.sort_values(["instance_id", "window_start", "signal"],
                                                       ignore_index=True),
                                  alone.sort_values(["instance_id", "window_start", "signal"], ignore_index=True),
                                  check_exact=True)


@pytest.mark.parametrize("rows", [1, 2, 7, 599, 600, 1201])
def test_the_sort_median_is_numpy_s_nanmedian(rows: int) -> None:
    rng = np.random.default_rng(rows)
    a = rng.integers(0, 5, (rows, 6)).astype(float)  # ties
    a[:, 1] = rng.normal(size=rows)
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 2] = np.nan  # an all-NaN column (a serverless cluster size)
    a[0, 3], a[-1, 4] = np.inf, -np.inf
    with pytest.warns(RuntimeWarning):
        want = np.nanmedian(a, axis=0)
    assert np.array_equal(collective._nanmedian0(a), want, equal_nan=True)
    med, mad, n = collective._robust(a)
    assert np.array_equal(med, want, equal_nan=True) and np.array_equal(n, (~np.isnan(a)).sum(axis=0))
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        assert np.array_equal(mad, np.nanmedian(np.abs(a - want), axis=0) * 1.4826, equal_nan=True)
