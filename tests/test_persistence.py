"""A statement that stays slower for the rest of a day is flagged on its later runs, ordinary spread is not."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pyarrow as pa

from workbench.analysis.persistence import (
    PERSISTENCE_REASON,
    PERSISTENCE_SIGNAL,
    PersistenceParams,
    persistent_runs,
)
from workbench.pipeline.contracts import anomaly_rows
from workbench.pipeline.scoring._residuals import evidence_columns

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)
SPREAD = 0.3  # the statement's runtime spread in log units (the model's (log q90 - log mean) / 1.2816)


def _day(statements: dict[tuple[int, str], np.ndarray], *, expected_ms: float = 4_000.0) -> pa.Table:
    """One day of scored rows: per (instance, fingerprint) its runtimes, one run every 20 minutes
    (statements interleaved), every run expected at ``expected_ms`` with the spread :data:`SPREAD`."""
    cols: dict[str, list] = {k: [] for k in ("instance_id", "query_id", "feature_fingerprint", "arrival_timestamp",
                                             "execution_duration_ms")}
    for s, ((instance, fingerprint), runtimes) in enumerate(statements.items()):
        for i, ms in enumerate(runtimes):
            cols["instance_id"].append(instance)
            cols["query_id"].append(1_000 * s + i)
            cols["feature_fingerprint"].append(fingerprint)
            cols["arrival_timestamp"].append(DAY + dt.timedelta(minutes=20 * i + s))
            cols["execution_duration_ms"].append(int(ms))
    n = len(cols["query_id"])
    q_ms = np.expm1(np.log1p(expected_ms) + 1.2815515655446004 * SPREAD)
    return pa.table({**cols, "was_cached": [False] * n, "was_aborted": [False] * n,
                     "pred_mean_ms": [expected_ms] * n, "pred_q_ms": [q_ms] * n,
                     "model_version": ["v1"] * n, "is_anomaly": [False] * n})


def _flagged(table: pa.Table, **kwargs: object) -> list[int]:
    return persistent_runs(table, **kwargs)["query_id"].tolist()


def test_a_statement_slowed_for_the_rest_of_the_day_is_flagged_on_exactly_its_later_runs() -> None:
    rng = np.random.default_rng(7)
    ordinary = 4_000.0 * np.exp(np.clip(rng.normal(0.0, 1.0, 30), -1.0, 1.0) * SPREAD)  # within one spread
    slowed = ordinary.copy()
    slowed[10:] *= 2.5  # the plan regresses at the 11th run and stays regressed
    table = _day({(1, "steady"): ordinary, (1, "regressed"): slowed})
    found = persistent_runs(table)
    # the 4th slowed run completes the first streak of four; every later run extends it
    assert found["query_id"].tolist() == [1_000 + i for i in range(13, 30)]
    assert (found["least_spreads"] >= PersistenceParams().bar).all() and (found["excess_ms"] >= 1_000).all()
    assert found["streak"].tolist() == list(range(4, 21))
    assert (found["streak_start"] == DAY + dt.timedelta(minutes=20 * 10 + 1)).all()


def test_ordinary_spread_and_short_bursts_are_not_flagged() -> None:
    rng = np.random.default_rng(11)
    ordinary = 4_000.0 * np.exp(rng.normal(0.0, SPREAD, 72))  # every 20 minutes, all day
    burst = ordinary.copy()
    burst[[20, 21, 22, 40, 41, 42]] *= 3.0  # three slow runs in a row, twice: not four
    assert _flagged(_day({(1, "a"): ordinary, (2, "a"): burst})) == []


def test_streaks_are_per_statement_and_instance_and_skip_what_says_nothing_about_the_plan() -> None:
    slow = np.full(8, 12_000.0)  # 3x its expectation from the first run on
    table = _day({(1, "x"): slow, (2, "x"): np.full(8, 4_000.0), (1, "y"): np.full(3, 12_000.0)})
    assert _flagged(table) == [3, 4, 5, 6, 7]  # only (1, x): (2, x) is as expected, (1, y) runs 3 times
    # a result-cache hit or an abort between slow runs neither breaks nor extends the streak
    cached = np.zeros(table.num_rows, dtype=bool)
    cached[[1, 2]] = True
    table = table.set_column(table.schema.get_field_index("was_cached"), "was_cached", pa.array(cached))
    assert _flagged(table) == [5, 6, 7]
    # runs whose expectation is a prior (the statement has no history) are not judged
    known = np.ones(table.num_rows, dtype=bool)
    known[:8] = False
    assert _flagged(table, known=known) == []
    # nor runs under the floor: 3x a 200 ms expectation is 400 ms of excess
    assert _flagged(_day({(1, "x"): np.full(8, 600.0)}, expected_ms=200.0)) == []


def test_a_run_the_detector_alerted_on_is_not_flagged_again() -> None:
    table = _day({(1, "x"): np.full(8, 12_000.0)})
    alerted = np.zeros(8, dtype=bool)
    alerted[5] = True
    table = table.set_column(table.schema.get_field_index("is_anomaly"), "is_anomaly", pa.array(alerted))
    assert _flagged(table) == [3, 4, 6, 7]  # the alerted run still counts in the streak


def test_the_spread_is_clipped_as_the_version_clips_it() -> None:
    table = _day({(1, "x"): np.full(8, 6_400.0)})  # 1.6x: 1.57 spreads of 0.3, 0.47 of 1.0
    assert _flagged(table) != []
    assert _flagged(table, scales={"v1": (1.0, 2.0)}) == []
    assert _flagged(table, params=PersistenceParams(runs=9)) == []


def test_flagged_runs_become_anomaly_rows_through_the_contract_with_their_evidence() -> None:
    table = _day({(1, "x"): np.full(6, 12_000.0)})
    found = persistent_runs(table)
    keep = pa.array(np.isin(table.column("query_id").to_numpy(), found["query_id"].to_numpy()))
    flagged = table.filter(keep).drop_columns(["is_anomaly"])
    for name, column in evidence_columns(found, PersistenceParams()).items():
        flagged = flagged.append_column(name, column)
    rows = anomaly_rows(flagged, thresholds=lambda _v: 1.0).to_pylist()
    assert [r["query_id"] for r in rows] == [3, 4, 5]
    first = rows[0]
    assert first["reason"] == PERSISTENCE_REASON and first["true_ms"] == 12_000.0 and first["pred_ms"] == 4_000.0
    features = orjson.loads(first["features"])
    assert features["evidence_signal"] == PERSISTENCE_SIGNAL and features["evidence_unit"] == "ms"
    assert features["expected_value"] == 4_000.0 and features["observed_value"] == 12_000.0
    assert "run 4 of a streak" in features["reference"] and "00:00:00 UTC" in features["reference"]
