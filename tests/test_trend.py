"""A statement whose runs get slower run after run through a day is flagged from the run its creep
began; ordinary spread, a creep that ended, a rise of a few per cent and sub-second statements are not."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import orjson
import pyarrow as pa
import pytest

from workbench.analysis.deferred import DEFERRED_REASONS, deferred_reasons
from workbench.analysis.persistence import PERSISTENCE_REASON
from workbench.analysis.trend import TREND_REASON, TREND_SIGNAL, TrendParams, creeping_runs, rise_score
from workbench.pipeline.contracts import anomaly_rows
from workbench.pipeline.scoring._residuals import group_evidence_columns

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)
SPREAD = 0.4  # every statement's runtime spread in log units
Z90 = 1.2815515655446004


def _day(statements: dict[str, list[float]], *, expected_ms: float = 8_000.0, alerted: set[int] = frozenset()
         ) -> pa.Table:
    """A scored day of instance 1: each statement's runs (their runtime as a factor of the expectation), one
    every 40 minutes from 01:00."""
    cols: dict[str, list] = {k: [] for k in ("query_id", "feature_fingerprint", "arrival_timestamp",
                                             "execution_duration_ms")}
    for s, (fp, factors) in enumerate(statements.items()):
        for i, factor in enumerate(factors):
            cols["query_id"].append(1_000 * s + i)
            cols["feature_fingerprint"].append(fp)
            cols["arrival_timestamp"].append(DAY + dt.timedelta(hours=1, minutes=40 * i, seconds=s))
            cols["execution_duration_ms"].append(round(expected_ms * factor))
    n = len(cols["query_id"])
    q_ms = np.expm1(np.log1p(expected_ms) + Z90 * SPREAD)
    return pa.table({"instance_id": pa.array([1] * n, pa.int64()), **cols, "was_cached": [False] * n,
                     "was_aborted": [False] * n, "pred_mean_ms": [expected_ms] * n, "pred_q_ms": [q_ms] * n,
                     "model_version": ["v1"] * n, "is_anomaly": [q in alerted for q in cols["query_id"]]})


def _creep(flat: int = 6, creeping: int = 14, step: float = 1.15) -> list[float]:
    """``flat`` ordinary runs, then runs each ``step`` times the one before."""
    return [1.0] * flat + [step ** (k + 1) for k in range(creeping)]


def test_the_rise_score_is_kendalls_normal_score() -> None:
    assert rise_score(np.arange(10.0)) == pytest.approx(3 * 45 / math.sqrt(10 * 9 * 25 / 2))  # S = 45: 4.02
    assert rise_score(np.arange(10.0)[::-1]) == pytest.approx(-rise_score(np.arange(10.0)))
    assert rise_score(np.ones(12)) == 0.0 and rise_score(np.array([1.0, 2.0])) == 0.0
    draws = [rise_score(np.random.default_rng(s).normal(size=40)) for s in range(400)]
    assert abs(np.mean(draws)) < 0.15 and 0.85 < np.std(draws) < 1.15  # a standard normal under no trend
    assert TrendParams().bar == pytest.approx(3.8906, abs=1e-3)


def test_a_creeping_statement_is_flagged_from_its_onset_on_its_runs_a_second_slower() -> None:
    table = _day({"etl": _creep(), "steady": [1.0] * 20})
    found = creeping_runs(table)
    runs = found["query_id"].tolist()
    # the creep began with the 7th run; its first runs of 1.15x and 1.32x are slower than expected by
    # 1.2 s and 2.6 s (8 s expected): every run since the onset is flagged, none of the steady statement's
    assert runs == list(range(6, 20))
    assert set(found["reason"]) == {TREND_REASON} and set(found["signal"]) == {TREND_SIGNAL}
    assert found["group_z"].iloc[0] >= TrendParams().bar and found["score"].min() >= 1.0
    assert found["trend_position"].tolist() == list(range(1, 15)) and set(found["trend_runs"]) == {14}
    assert found["span_start"].iloc[0] == table.column("arrival_timestamp")[6].as_py()
    # the same rows in another order: the same flags
    order = np.random.default_rng(0).permutation(table.num_rows)
    assert sorted(creeping_runs(table.take(order))["query_id"].tolist()) == runs


def test_ordinary_spread_a_creep_that_ended_a_small_rise_and_sub_second_runs_are_not_flagged() -> None:
    rng = np.random.default_rng(1)
    ordinary = {f"s{k}": np.exp(rng.normal(0.0, SPREAD, 20)).tolist() for k in range(300)}
    assert creeping_runs(_day(ordinary)).empty
    # back at its usual by its last run: the incident is over (the persistence rule judged its streaks)
    assert creeping_runs(_day({"etl": [*_creep(), 1.0, 0.8]})).empty
    # 300 runs rising by 4 % over the day: significant, but not ln 1.5 slower since the onset
    assert creeping_runs(_day({"busy": list(np.linspace(1.0, 1.04, 300))})).empty
    # a 20 ms statement creeping to 10x: no run is a second slower
    assert creeping_runs(_day({"tiny": _creep(step=1.2)}, expected_ms=20.0)).empty
    # too few runs for the test
    assert creeping_runs(_day({"etl": _creep(flat=2, creeping=7)})).empty


def test_runs_alerted_or_excluded_keep_their_own_alert_and_unknown_statements_are_not_judged() -> None:
    table = _day({"etl": _creep()}, alerted={19})
    exclude = np.zeros(table.num_rows, dtype=bool)
    exclude[18] = True
    assert creeping_runs(table, exclude=exclude)["query_id"].tolist() == list(range(6, 18))
    assert creeping_runs(table, known=np.zeros(table.num_rows, dtype=bool)).empty


@pytest.mark.parametrize(("change", "named"), [({"min_runs": 2}, "min_runs"), ({"false_rate": 0.0}, "false_rate"),
                                               ({"floor": -1.0}, "floor"), ({"floor_ms": float("inf")}, "floor_ms"),
                                               ({"min_scale": 2.0}, "min_scale")])
def test_invalid_constants_are_refused_naming_the_parameter(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TrendParams(**change)


def test_a_step_regression_gets_its_first_runs_from_the_trend_and_the_rest_from_the_persistence_rule() -> None:
    # 8 ordinary runs, then every run 4x: the persistence rule flags the 4th slow run on, the trend its first 3
    table = _day({"regressed": [1.0] * 8 + [4.0] * 12})
    log = table.drop_columns(["pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly"])
    n = table.num_rows
    reasons = deferred_reasons(log, table.column("pred_mean_ms").to_numpy(), table.column("pred_q_ms").to_numpy(),
                               np.zeros(n, dtype=bool), np.ones(n, dtype=bool), "v1", None)
    assert TREND_REASON in DEFERRED_REASONS
    assert reasons[:8].tolist() == [None] * 8
    assert reasons[8:11].tolist() == [TREND_REASON] * 3 and reasons[11:].tolist() == [PERSISTENCE_REASON] * 9


def test_the_alert_carries_the_creeps_evidence_through_the_anomaly_contract() -> None:
    table = _day({"etl": _creep()})
    found = creeping_runs(table)
    evidence = group_evidence_columns(found, None)
    keys = pa.table({"instance_id": found["instance_id"].to_numpy(), "query_id": found["query_id"].to_numpy(),
                     **evidence})
    scored = table.drop_columns(["is_anomaly"]).join(keys, ["instance_id", "query_id"], join_type="inner")
    rows = sorted(anomaly_rows(scored, thresholds=lambda _version: 1.0).to_pylist(), key=lambda r: r["query_id"])
    assert len(rows) == 14 and {r["reason"] for r in rows} == {TREND_REASON}
    features = orjson.loads(rows[0]["features"])
    assert features["evidence_signal"] == TREND_SIGNAL and features["expected_value"] == pytest.approx(8_000.0)
    assert "run 1 of the 14 of this statement since 05:00:00 UTC" in features["reference"]
    assert "Kendall's trend test: z " in features["reference"] and "a bar of 3.89" in features["reference"]
