"""A run on an instance the model never saw, far beyond that instance's record of the day: flagged once at
least 300 earlier runs of its type make the record, when it overran five times the record and at least a
second longer than the record allows; alerted runs never make a record, a flagged run is the next one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pyarrow as pa
import pytest

from workbench.analysis.deferred import DEFERRED_REASONS, deferred_reasons
from workbench.analysis.instance_record import (
    RECORD_REASON,
    RECORD_SIGNAL,
    RecordParams,
    instance_record_runs,
)
from workbench.pipeline.contracts import anomaly_rows
from workbench.pipeline.scoring._residuals import group_evidence_columns

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)


def _day(overruns: list[float], *, pred_ms: float = 200.0, query_type: str = "select", instance: int = 78,
         alerted: set[int] = frozenset(), first_id: int = 0, minutes: float = 1.0) -> pa.Table:
    """A scored day of ``instance``: one run of ``query_type`` a minute, each ``overruns[i]`` times its
    prediction ``pred_ms`` (in ``log1p`` terms, as the rule measures it)."""
    n = len(overruns)
    exec_ms = np.expm1(np.log1p(pred_ms) + np.log(np.asarray(overruns, dtype=float)))
    ids = list(range(first_id, first_id + n))
    return pa.table({
        "instance_id": pa.array([instance] * n, pa.int64()), "query_id": pa.array(ids, pa.int64()),
        "arrival_timestamp": pa.array([DAY + dt.timedelta(minutes=minutes * i) for i in range(n)],
                                      pa.timestamp("us", tz="UTC")),
        "execution_duration_ms": pa.array(np.round(exec_ms), pa.int64()), "query_type": [query_type] * n,
        "feature_fingerprint": [f"{query_type}-{i}" for i in ids],
        "was_cached": [False] * n, "was_aborted": [False] * n, "pred_mean_ms": [pred_ms] * n,
        "pred_q_ms": [pred_ms * 4] * n, "model_version": ["v1"] * n,
        "is_anomaly": [q in alerted for q in ids]})


def _ordinary(n: int, seed: int = 0) -> list[float]:
    """``n`` ordinary overruns: 0.3x-3x the prediction, the largest exactly 3x."""
    values = np.exp(np.random.default_rng(seed).uniform(np.log(0.3), np.log(3.0), n))
    values[n // 2] = 3.0
    return values.tolist()


def test_a_run_five_times_beyond_the_instances_record_after_300_runs_is_flagged_with_its_evidence() -> None:
    day = _day([*_ordinary(320), 20.0])  # 20x the prediction; the record is 3x: 6.7x beyond it
    found = instance_record_runs(day, np.ones(day.num_rows, dtype=bool))
    assert found["query_id"].tolist() == [320]
    run = found.iloc[0]
    assert run["reason"] == RECORD_REASON and run["signal"] == RECORD_SIGNAL
    assert run["group_key"] == "query_type" and run["group_value"] == "select" and run["group_queries"] == 320
    assert run["record_ratio"] == pytest.approx(3.0, rel=0.01)
    assert run["group_ratio"] == pytest.approx(20.0 / 3.0, rel=0.01)
    # expected: what the record allows this run (its prediction times the record's overrun)
    assert run["expected_ms"] == pytest.approx(np.expm1(np.log1p(200.0) + np.log(3.0)), rel=1e-6)
    assert run["excess_ms"] == pytest.approx(run["observed_ms"] - run["expected_ms"])
    assert run["score"] == pytest.approx(min(np.log(20.0 / 3.0) / np.log(5.0), run["excess_ms"] / 1000.0), rel=1e-3)
    assert run["span_start"] == DAY and run["span_end"] == DAY + dt.timedelta(minutes=320)
    # the day in another order: the same flag (the rule orders by arrival)
    order = np.random.default_rng(1).permutation(day.num_rows)
    shuffled = instance_record_runs(day.take(order), np.ones(day.num_rows, dtype=bool))
    assert shuffled["query_id"].tolist() == [320]


@pytest.mark.parametrize(("overruns", "why"), [
    ([*_ordinary(299), 20.0], "299 earlier runs make no record"),
    ([*_ordinary(320), 14.0], "4.7x beyond the record, not 5x"),
])
def test_too_few_earlier_runs_or_too_little_beyond_the_record_is_not_flagged(overruns: list[float], why: str) -> None:
    day = _day(overruns)
    assert instance_record_runs(day, np.ones(day.num_rows, dtype=bool)).empty, why


def test_a_run_costing_less_than_a_second_beyond_the_record_is_not_flagged() -> None:
    day = _day([*_ordinary(320), 20.0], pred_ms=10.0)  # 600 ms, 510 ms beyond what the record allows
    assert instance_record_runs(day, np.ones(day.num_rows, dtype=bool)).empty
    assert len(instance_record_runs(day, np.ones(day.num_rows, dtype=bool), RecordParams(floor_ms=100.0))) == 1


def test_only_never_seen_instances_runs_and_each_query_type_has_its_own_record() -> None:
    day = _day([*_ordinary(320), 20.0])
    unseen = np.ones(day.num_rows, dtype=bool)
    assert instance_record_runs(day, ~unseen).empty and instance_record_runs(day, None).empty
    # a type whose first run overran 50x (before any record: it makes the record): its record, not the
    # selects', judges its run
    inserts = _day([50.0, *_ordinary(319), 20.0], query_type="insert", first_id=1000, minutes=0.9)
    both = pa.concat_tables([day, inserts])
    found = instance_record_runs(both, np.ones(both.num_rows, dtype=bool))
    assert found["query_id"].tolist() == [320]
    # the same runs on two instances: each instance's own record (the second's 160 runs make none)
    other = _day([*_ordinary(160), 20.0], instance=79, first_id=2000)
    two = pa.concat_tables([day, other])
    assert instance_record_runs(two, np.ones(two.num_rows, dtype=bool))["query_id"].tolist() == [320]


def test_runs_of_the_same_microsecond_are_taken_in_query_id_order_whatever_the_rows_order() -> None:
    # the 20x run and an ordinary one arrive together; the rows' order (the stream's batching) must not decide
    day = _day([*_ordinary(320), 20.0, 1.0])
    arrivals = day.column("arrival_timestamp").to_pylist()
    arrivals[321] = arrivals[320]
    day = day.set_column(day.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                         pa.array(arrivals, pa.timestamp("us", tz="UTC")))
    results = set()
    for order in (np.arange(day.num_rows), np.arange(day.num_rows)[::-1],
                  np.random.default_rng(3).permutation(day.num_rows)):
        found = instance_record_runs(day.take(order), np.ones(day.num_rows, dtype=bool))
        results.add(tuple(zip(found["query_id"], found["group_queries"], strict=True)))
    assert results == {((320, 320),)}  # the 20x run (query 320) before its twin: 320 runs make its record


def test_query_types_spelled_otherwise_are_one_type() -> None:
    # 'SELECT' and ' select ' as another tool writes them: the same type as 'select', so its 3x run is the record
    day = _day([*_ordinary(320), 20.0])
    spelled = [("SELECT", " select ", "select")[i % 3] for i in range(day.num_rows)]
    day = day.set_column(day.schema.get_field_index("query_type"), "query_type", pa.array(spelled))
    found = instance_record_runs(day, np.ones(day.num_rows, dtype=bool))
    assert found["query_id"].tolist() == [320] and found["group_queries"].tolist() == [320]
    assert found["group_value"].tolist() == ["select"]


def test_alerted_runs_make_no_record_and_a_flagged_run_is_the_next_record() -> None:
    # an earlier runaway the detector alerted on (100x) does not hide the later one (20x); the flagged run is the
    # record the next ones are judged by: 18x is no new level, 120x is
    day = _day([*_ordinary(160), 100.0, *_ordinary(160, seed=2), 20.0, 18.0, 120.0], alerted={160})
    found = instance_record_runs(day, np.ones(day.num_rows, dtype=bool))
    assert found["query_id"].tolist() == [321, 323] and found["group_queries"].tolist() == [320, 322]
    assert found["record_ratio"].iloc[1] == pytest.approx(20.0, rel=0.01)
    # the same runaway unalerted is the record: nothing after it is five times beyond it (the 120x: 1.2x)
    day = _day([*_ordinary(160), 100.0, *_ordinary(160, seed=2), 20.0, 18.0, 120.0])
    assert instance_record_runs(day, np.ones(day.num_rows, dtype=bool)).empty
    # a run another rule flagged keeps its alert and is no part of the record
    exclude = np.zeros(day.num_rows, dtype=bool)
    exclude[160] = True
    assert instance_record_runs(day, np.ones(day.num_rows, dtype=bool), exclude=exclude)["query_id"].tolist() == [
        321, 323]


def test_cached_aborted_and_unscored_runs_are_neither_judged_nor_records() -> None:
    day = _day([*_ordinary(320), 200.0, 20.0])
    assert instance_record_runs(day, np.ones(day.num_rows, dtype=bool))["query_id"].tolist() == [320]
    for column, value in (("was_cached", True), ("was_aborted", True), ("pred_mean_ms", None)):
        values = day.column(column).to_pylist()
        values[320] = value
        changed = day.set_column(day.schema.get_field_index(column), column,
                                 pa.array(values, day.schema.field(column).type))
        assert instance_record_runs(changed, np.ones(day.num_rows, dtype=bool))["query_id"].tolist() == [321], column


@pytest.mark.parametrize(("change", "named"), [({"min_runs": 0}, "min_runs"), ({"min_runs": 2.5}, "min_runs"),
                                               ({"factor": 1.0}, "factor"), ({"factor": float("inf")}, "factor"),
                                               ({"floor_ms": -1.0}, "floor_ms"), ({"floor_ms": True}, "floor_ms")])
def test_invalid_constants_are_refused_naming_the_parameter(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RecordParams(**change)


def test_one_unseen_value_per_row_is_required() -> None:
    day = _day(_ordinary(10))
    with pytest.raises(ValueError, match="one value per row"):
        instance_record_runs(day, np.ones(day.num_rows - 1, dtype=bool))


def test_the_step_gives_the_run_its_reason_after_the_other_rules_and_evidence_through_the_contract() -> None:
    day = _day([*_ordinary(320), 20.0])
    log = day.drop_columns(["pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly"])
    n = day.num_rows
    pred, q = day.column("pred_mean_ms").to_numpy(), day.column("pred_q_ms").to_numpy()
    reasons = deferred_reasons(log, pred, q, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), "v1", None,
                               unseen=np.ones(n, dtype=bool))
    assert RECORD_REASON in DEFERRED_REASONS
    assert np.flatnonzero(reasons == RECORD_REASON).tolist() == [320]
    without = deferred_reasons(log, pred, q, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), "v1", None)
    assert (without == None).all()  # noqa: E711 (no unseen mask given: the rule does not run)
    found = instance_record_runs(day, np.ones(n, dtype=bool))
    evidence = group_evidence_columns(found, None)
    keys = pa.table({"instance_id": found["instance_id"].to_numpy(), "query_id": found["query_id"].to_numpy(),
                     **evidence})
    scored = day.drop_columns(["is_anomaly"]).join(keys, ["instance_id", "query_id"], join_type="inner")
    rows = anomaly_rows(scored, thresholds=lambda _version: 1.0).to_pylist()
    assert len(rows) == 1 and rows[0]["reason"] == RECORD_REASON and rows[0]["query_id"] == 320
    features = orjson.loads(rows[0]["features"])
    assert features["evidence_signal"] == RECORD_SIGNAL and features["evidence_unit"] == "ms"
    assert features["expected_value"] == pytest.approx(found["expected_ms"].iloc[0])
    reference = features["reference"]
    assert "every instance's runs (this instance is new)" in reference
    assert "320 earlier select runs on this instance today that raised no alert" in reference
    assert "that run took 3.0x its prediction" in reference and "This run took 20x its prediction" in reference
