"""Another instance's workload on this one: statements that are regulars of one instance, arriving on
another that never ran them, are flagged as a moved workload once several of them come; a log whose
fingerprints repeat across instances disarms the rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pyarrow as pa
import pytest

from workbench.analysis.deferred import DEFERRED_REASONS, deferred_reasons
from workbench.analysis.moved_statements import (
    MOVED_REASON,
    MOVED_SIGNAL,
    MovedParams,
    moved_statement_runs,
)
from workbench.ml._testing import generated_log
from workbench.ml.features import SHARED_FINGERPRINTS_MAX, FeatureBuilder
from workbench.pipeline.contracts import anomaly_rows
from workbench.pipeline.scoring._residuals import group_evidence_columns

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)


def _instances(log: pa.Table) -> tuple[int, int]:
    counts = np.unique(log.column("instance_id").to_numpy(), return_counts=True)
    busiest = counts[0][np.argsort(counts[1])[::-1]]
    return int(busiest[0]), int(busiest[1])


def _regulars(log: pa.Table, instance: int, k: int) -> list[str]:
    """The ``k`` fingerprints that ran most often on ``instance`` (each at least 3 times)."""
    mine = log.filter(pa.compute.equal(log.column("instance_id"), instance))
    fps, counts = np.unique(np.asarray(mine.column("feature_fingerprint").drop_null().to_pylist(), dtype=str),
                            return_counts=True)
    order = np.argsort(-counts, kind="stable")[:k]
    assert (counts[order] >= 3).all()
    return [str(f) for f in fps[order]]


def test_a_regular_statement_of_another_instance_has_that_home_and_its_median_runtime() -> None:
    log = generated_log(days=1, rows_per_day=6000, seed=3)
    builder = FeatureBuilder().fit(log)
    a, b = _instances(log)
    regular = _regulars(log, a, 1)[0]
    own = _regulars(log, b, 1)[0]
    mine = log.filter(pa.compute.and_(pa.compute.equal(log.column("instance_id"), a),
                                      pa.compute.equal(log.column("feature_fingerprint"), regular)))
    median = float(np.expm1(np.median(np.log1p(mine.column("execution_duration_ms").to_numpy()))))
    rows = pa.table({"instance_id": pa.array([b, a, b, 999_999, b], pa.int64()),
                     "feature_fingerprint": pa.array([regular, regular, own, regular, None], pa.string())})
    home, home_ms = builder.statement_homes(rows)
    # b never ran it: a's workload. a's own run, b's own statement, an instance without history and a
    # null fingerprint have no home.
    assert home.tolist() == [a, -1, -1, -1, -1]
    assert home_ms[0] == pytest.approx(median, rel=1e-6) and np.isnan(home_ms[1:]).all()


def test_a_statement_regular_nowhere_or_on_several_instances_has_no_home() -> None:
    log = generated_log(days=1, rows_per_day=6000, seed=3)
    a, b = _instances(log)
    others = [i for i in np.unique(log.column("instance_id").to_numpy()) if i not in (a, b)]
    rare = log.filter(pa.compute.equal(log.column("instance_id"), a))
    fps, counts = np.unique(np.asarray(rare.column("feature_fingerprint").drop_null().to_pylist(), dtype=str),
                            return_counts=True)
    once = str(fps[counts == 1][0])  # ran once on a: not a regular anywhere
    shared = _regulars(log, a, 1)[0]
    # the same statement once on a third instance too: shared by two instances (a collision, or a global one)
    extra = log.slice(0, 1).to_pylist()[0] | {"instance_id": int(others[0]), "feature_fingerprint": shared}
    builder = FeatureBuilder().fit(pa.concat_tables([log, pa.Table.from_pylist([extra], schema=log.schema)]))
    home, _ = builder.statement_homes(pa.table({"instance_id": pa.array([b, b], pa.int64()),
                                                "feature_fingerprint": pa.array([once, shared], pa.string())}))
    assert home.tolist() == [-1, -1]


def test_a_log_whose_fingerprints_repeat_across_instances_disarms_the_rule() -> None:
    log = generated_log(days=1, rows_per_day=6000, seed=3)
    a, b = _instances(log)
    regular = _regulars(log, a, 1)[0]
    rows = pa.table({"instance_id": pa.array([b], pa.int64()), "feature_fingerprint": pa.array([regular])})
    assert FeatureBuilder().fit(log).statement_homes(rows)[0].tolist() == [a]
    # Global fingerprints, as a generator drawing every instance's statements from one pool of templates
    # would make them: each instance's statements named by their rank, so a share far above
    # SHARED_FINGERPRINTS_MAX runs on several instances.
    frame = log.select(["instance_id", "feature_fingerprint"]).to_pandas()
    rank = frame.groupby("instance_id")["feature_fingerprint"].rank(method="dense")
    shared = np.where(frame["feature_fingerprint"].isna(), None, "template-" + rank.fillna(0).astype(int).astype(str))
    at = log.schema.get_field_index("feature_fingerprint")
    global_log = log.set_column(at, log.schema.field(at), pa.array(shared.tolist(), pa.string()))
    builder = FeatureBuilder().fit(global_log)
    per_fp = builder.fp_table_.group_by("feature_fingerprint").aggregate([("instance_id", "count")])
    assert np.mean(per_fp.column("instance_id_count").to_numpy() > 1) > SHARED_FINGERPRINTS_MAX
    # a template only one instance ran (regularly), arriving on another: the shape of a move, but not in this log
    table = builder.fp_table_.to_pandas()
    single = table[table.groupby("feature_fingerprint")["instance_id"].transform("size") == 1]
    single = single[single["n"] >= builder.min_history].iloc[0]
    other = next(i for i in (a, b) if i != single["instance_id"])
    moved = pa.table({"instance_id": pa.array([other], pa.int64()),
                      "feature_fingerprint": pa.array([single["feature_fingerprint"]])})
    assert builder.statement_homes(moved)[0].tolist() == [-1]
    builder_homes = FeatureBuilder().fit(global_log)
    builder_homes.fp_table_ = builder_homes.fp_table_.filter(pa.compute.equal(
        builder_homes.fp_table_.column("feature_fingerprint"), single["feature_fingerprint"]))
    builder_homes._build_index()  # the same table without the shared templates: armed, it is a move
    assert builder_homes.statement_homes(moved)[0].tolist() == [int(single["instance_id"])]


def _day(home_of: dict[str, int], runs: dict[str, int], *, instance: int = 2, runtime_ms: float = 900.0,
         alerted: set[int] = frozenset()) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """A scored day of ``instance``: ``runs[fp]`` runs of each statement, spread over the afternoon;
    ``home_of`` names the home of the moved ones (the rest: the instance's own statements)."""
    cols: dict[str, list] = {k: [] for k in ("query_id", "feature_fingerprint", "arrival_timestamp",
                                             "execution_duration_ms")}
    homes, home_ms = [], []
    for s, (fp, count) in enumerate(runs.items()):
        for i in range(count):
            cols["query_id"].append(100 * s + i)
            cols["feature_fingerprint"].append(fp)
            cols["arrival_timestamp"].append(DAY + dt.timedelta(hours=13, minutes=7 * i + s))
            cols["execution_duration_ms"].append(runtime_ms)
            homes.append(home_of.get(fp, -1))
            home_ms.append(runtime_ms / 3 if fp in home_of else np.nan)
    n = len(homes)
    table = pa.table({"instance_id": pa.array([instance] * n, pa.int64()), **cols,
                      "pred_mean_ms": [500.0] * n, "pred_q_ms": [1_500.0] * n, "model_version": ["v1"] * n,
                      "is_anomaly": [q in alerted for q in cols["query_id"]], "was_cached": [False] * n,
                      "was_aborted": [False] * n})
    return table, np.array(homes, dtype=np.int64), np.array(home_ms)


def test_several_statements_of_one_home_are_a_moved_workload_and_every_run_is_flagged() -> None:
    table, home, home_ms = _day({"m1": 7, "m2": 7, "m3": 7}, {"m1": 4, "m2": 3, "m3": 2, "own": 20},
                                alerted={100})
    found = moved_statement_runs(table, home, home_ms)
    # every run of the three moved statements but the one the per-query detector alerted on (its own alert)
    assert sorted(found["query_id"].tolist()) == [0, 1, 2, 3, 101, 102, 200, 201]
    assert set(found["reason"]) == {MOVED_REASON} and set(found["signal"]) == {MOVED_SIGNAL}
    assert set(found["group_value"]) == {"7"} and set(found["group_queries"]) == {9}
    assert set(found["group_statements"]) == {3} and found["score"].min() == pytest.approx(1.0)
    assert found["expected_ms"].iloc[0] == pytest.approx(300.0) and found["excess_ms"].iloc[0] == pytest.approx(600.0)
    assert found["group_ratio"].iloc[0] == pytest.approx(np.expm1(np.log1p(900.0)) / 300.0, rel=0.01)
    assert (np.diff(found["row"].to_numpy()[np.argsort(found["span_start"].to_numpy(), kind="stable")]) != 0).all()
    # the same rows in another order: the same flags
    order = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = moved_statement_runs(table.take(order), home[order], home_ms[order])
    assert sorted(shuffled["query_id"].tolist()) == sorted(found["query_id"].tolist())


def test_too_few_statements_two_homes_or_a_workload_costing_nothing_are_not_flagged() -> None:
    # two statements of one home (a coincidence of hashes cannot be told from a move): nothing
    table, home, home_ms = _day({"m1": 7, "m2": 7}, {"m1": 5, "m2": 5, "own": 20})
    assert moved_statement_runs(table, home, home_ms).empty
    # three statements but of two homes: no home has three
    table, home, home_ms = _day({"m1": 7, "m2": 7, "m3": 8}, {"m1": 5, "m2": 5, "m3": 5, "own": 20})
    assert moved_statement_runs(table, home, home_ms).empty
    # three statements whose runs took 1 ms each: not the floor of 1 s together
    table, home, home_ms = _day({"m1": 7, "m2": 7, "m3": 7}, {"m1": 2, "m2": 2, "m3": 2}, runtime_ms=1.0)
    assert moved_statement_runs(table, home, home_ms).empty
    assert len(moved_statement_runs(table, home, home_ms, MovedParams(floor_ms=0.0))) == 6
    # excluded rows (another rule's) keep their alert but count towards their group
    table, home, home_ms = _day({"m1": 7, "m2": 7, "m3": 7}, {"m1": 1, "m2": 1, "m3": 1, "own": 5})
    exclude = np.zeros(table.num_rows, dtype=bool)
    exclude[0] = True
    assert moved_statement_runs(table, home, home_ms, exclude=exclude)["query_id"].tolist() == [100, 200]


@pytest.mark.parametrize(("change", "named"), [({"min_statements": 0}, "min_statements"),
                                               ({"min_statements": 2.5}, "min_statements"),
                                               ({"floor_ms": -1.0}, "floor_ms"),
                                               ({"floor_ms": float("nan")}, "floor_ms")])
def test_invalid_constants_are_refused_naming_the_parameter(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MovedParams(**change)


def test_a_home_per_row_is_required() -> None:
    table, home, home_ms = _day({"m1": 7}, {"m1": 3})
    with pytest.raises(ValueError, match="one value per row"):
        moved_statement_runs(table, home[:-1], home_ms)


def test_the_step_gives_the_moved_runs_their_reason_after_the_other_rules_and_evidence_through_the_contract(
) -> None:
    table, home, home_ms = _day({"m1": 7, "m2": 7, "m3": 7}, {"m1": 3, "m2": 3, "m3": 3, "own": 20})
    log = table.drop_columns(["pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly"])
    n = table.num_rows
    reasons = deferred_reasons(log, table.column("pred_mean_ms").to_numpy(), table.column("pred_q_ms").to_numpy(),
                               np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), "v1", None, homes=(home, home_ms))
    assert MOVED_REASON in DEFERRED_REASONS
    assert np.flatnonzero(reasons == MOVED_REASON).tolist() == np.flatnonzero(home >= 0).tolist()
    assert (reasons[home < 0] == None).all()  # noqa: E711 (elementwise)
    without = deferred_reasons(log, table.column("pred_mean_ms").to_numpy(), table.column("pred_q_ms").to_numpy(),
                               np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), "v1", None)
    assert (without == None).all()  # noqa: E711 (no homes given: the rule does not run)
    found = moved_statement_runs(table, home, home_ms)
    evidence = group_evidence_columns(found, None)
    keys = pa.table({"instance_id": found["instance_id"].to_numpy(), "query_id": found["query_id"].to_numpy(),
                     **evidence})
    scored = table.drop_columns(["is_anomaly"]).join(keys, ["instance_id", "query_id"], join_type="inner")
    rows = anomaly_rows(scored, thresholds=lambda _version: 1.0).to_pylist()
    assert len(rows) == 9 and {r["reason"] for r in rows} == {MOVED_REASON}
    features = orjson.loads(rows[0]["features"])
    assert features["evidence_signal"] == MOVED_SIGNAL and features["expected_value"] == pytest.approx(300.0)
    assert "on instance 7, its home" in features["reference"] and "3 statements of instance 7" in features["reference"]
