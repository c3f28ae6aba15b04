"""A part of an instance (one user, one database, one query type) running slower for an hour is flagged on
its queries past the model's tolerance; ordinary spread, small groups and sub-second parts are not."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from workbench.analysis.deferred import deferred_flags
from workbench.analysis.slower_groups import (
    GROUP_REASON,
    GROUP_SIGNAL,
    QUEUE_GROUP_REASON,
    QUEUE_GROUP_SIGNAL,
    GroupParams,
    slower_group_runs,
    usual_group_hours,
)
from workbench.pipeline.contracts import anomaly_rows
from workbench.pipeline.scoring._residuals import group_evidence_columns

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)
SPREAD = 0.4  # every statement's runtime spread in log units (the model's (log q90 - log mean) / 1.2816)
Z90 = 1.2815515655446004
USUAL_WAIT_MS = 500.0  # every statement's usual wait (the detector's queue reference: its own, or the instance's)


def _hour(users: dict[int, int], *, factor: dict[int, float] | None = None, expected_ms: float = 3_000.0,
          seed: int = 3, hour: int = 10, database: int = 7, waits: dict[int, float] | None = None) -> pa.Table:
    """One hour of instance 1's scored queries: ``users`` maps a user to its query count; each query's
    runtime is its expectation times a draw of the model's own spread, times ``factor[user]``; it
    waits an ordinary wait (:data:`USUAL_WAIT_MS`, 0.5-2x) or ``waits[user]`` ms more."""
    rng = np.random.default_rng(seed)
    factor = factor or {}
    cols: dict[str, list] = {k: [] for k in ("user_id", "query_id", "arrival_timestamp", "execution_duration_ms",
                                             "queue_duration_ms")}
    for user, count in users.items():
        for i in range(count):
            cols["user_id"].append(user)
            cols["query_id"].append(1_000 * user + i)
            cols["arrival_timestamp"].append(DAY + dt.timedelta(hours=hour, seconds=int(3_590 * i / count) + user))
            draw = expected_ms * math.exp(rng.normal(0.0, SPREAD)) * factor.get(user, 1.0)
            cols["execution_duration_ms"].append(int(draw))
            cols["queue_duration_ms"].append(int(USUAL_WAIT_MS * math.exp(rng.uniform(-0.7, 0.7))
                                                 + (waits or {}).get(user, 0.0)))
    n = len(cols["query_id"])
    q_ms = np.expm1(np.log1p(expected_ms) + Z90 * SPREAD)
    return pa.table({"instance_id": [1] * n, **cols, "database_id": [database] * n, "query_type": ["select"] * n,
                     "was_cached": [False] * n, "was_aborted": [False] * n, "pred_mean_ms": [expected_ms] * n,
                     "pred_q_ms": [q_ms] * n, "model_version": ["v1"] * n, "is_anomaly": [False] * n})


def _users(found) -> set[int]:
    return {int(q) // 1_000 for q in found["query_id"]}


def test_one_users_queries_running_twice_their_expectation_are_flagged_and_the_others_are_not() -> None:
    # user 5 is a tenth of the instance's hour: its slowdown cannot move the instance's medians
    table = _hour({1: 120, 2: 90, 5: 24}, factor={5: 2.0})
    found = slower_group_runs(table, params=GroupParams(keys=("user_id",)))
    assert _users(found) == {5}
    slow = table.filter(pa.compute.equal(table.column("user_id"), 5))
    beyond = (slow.column("execution_duration_ms").to_numpy() > slow.column("pred_q_ms").to_numpy()).sum()
    assert 0 < len(found) == beyond < 24  # the queries past the tolerance, not every query of the user
    assert (found["group_key"] == "user_id").all() and (found["group_value"] == "5").all()
    assert (found["group_queries"] == 24).all() and (found["group_ratio"] > 1.5).all()
    assert (found["score"] >= 1.0).all() and (found["group_z"] >= 5.0).all()
    assert (found["span_start"] == DAY + dt.timedelta(hours=10)).all()
    # the database and the query type hold the whole instance: a tenth slower moves neither median
    assert _users(slower_group_runs(table, params=GroupParams(keys=("database_id", "query_type")))) == set()


def test_ordinary_spread_is_never_a_slower_group() -> None:
    for seed in range(20):
        table = _hour({1: 60, 2: 25, 3: 200, 4: 21}, seed=seed)
        assert slower_group_runs(table).empty, seed


def test_the_bars_small_groups_small_slowdowns_and_sub_second_parts() -> None:
    # 19 judged queries: not a group, however slow
    assert slower_group_runs(_hour({1: 100, 5: 19}, factor={5: 3.0}), params=GroupParams(keys=("user_id",))).empty
    # 1.3x: under the ln 1.5 floor, however many queries
    assert slower_group_runs(_hour({1: 100, 5: 400}, factor={5: 1.3}), params=GroupParams(keys=("user_id",))).empty
    # 30 queries of 20 ms running 3x: 1.2 s in all, but the rule needs the summed excess of 1 s ...
    tiny = _hour({1: 100, 5: 30}, factor={5: 3.0}, expected_ms=20.0)
    assert _users(slower_group_runs(tiny, params=GroupParams(keys=("user_id",)))) == {5}
    # ... and 5 ms queries at 3x add 0.3 s: not an incident
    tiniest = _hour({1: 100, 5: 30}, factor={5: 3.0}, expected_ms=5.0)
    assert slower_group_runs(tiniest, params=GroupParams(keys=("user_id",))).empty


def test_a_slowdown_of_forty_minutes_is_flagged_in_its_windows_not_in_the_rest_of_its_hour() -> None:
    table = _hour({1: 100, 5: 120})
    minute = (table.column("arrival_timestamp").to_numpy().astype("datetime64[s]").astype(np.int64) % 3_600) // 60
    episode = (table.column("user_id").to_numpy() == 5) & (minute >= 10) & (minute < 50)
    slowed = np.where(episode, table.column("execution_duration_ms").to_numpy() * 4, table.column(
        "execution_duration_ms").to_numpy())
    table = table.set_column(table.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                             pa.array(slowed))
    found = slower_group_runs(table, params=GroupParams(keys=("user_id",)))
    assert len(found) > 10 and episode[found["row"].to_numpy()].all()  # the hour is slower: 80 of its 120 at 4x
    q_ms = table.column("pred_q_ms").to_numpy()
    calm_beyond = (~episode & (table.column("user_id").to_numpy() == 5) & (slowed > q_ms)).sum()
    assert calm_beyond > 0  # ordinary queries past the tolerance in the hour's calm windows: not flagged


def test_only_judged_queries_count_and_alerted_or_excluded_ones_keep_their_own_alert() -> None:
    table = _hour({1: 100, 5: 30}, factor={5: 2.5})
    keys = GroupParams(keys=("user_id",))
    found = slower_group_runs(table, params=keys)
    assert len(found) > 2
    # statements without their own history (known False) are not judged: the group falls under 20
    known = ~np.isin(table.column("query_id").to_numpy(), [5_000 + i for i in range(11)])
    assert slower_group_runs(table, known, keys).empty
    # the per-query detector's alerts and another rule's flags are left alone (the group still counts them)
    rows = found["row"].to_numpy()
    alerted = np.zeros(table.num_rows, dtype=bool)
    alerted[rows[:1]] = True
    table = table.set_column(table.schema.get_field_index("is_anomaly"), "is_anomaly", pa.array(alerted))
    excluded = np.zeros(table.num_rows, dtype=bool)
    excluded[rows[1:2]] = True
    again = slower_group_runs(table, params=keys, exclude=excluded)
    assert again["row"].tolist() == rows[2:].tolist()
    # cached and aborted queries are never judged
    for flag in ("was_cached", "was_aborted"):
        marked = table.set_column(table.schema.get_field_index(flag), flag,
                                  pa.array(table.column("user_id").to_numpy() == 5))
        assert slower_group_runs(marked, params=keys).empty


def test_a_query_in_two_slower_groups_carries_the_stronger_ones_evidence_once() -> None:
    table = _hour({1: 100, 5: 40}, factor={5: 2.5}, database=9)
    database = pa.array(np.where(table.column("user_id").to_numpy() == 5, 31, 9))
    table = table.set_column(table.schema.get_field_index("database_id"), "database_id", database)
    found = slower_group_runs(table)
    assert found["row"].is_unique and _users(found) == {5}
    by_key = {k: slower_group_runs(table, params=GroupParams(keys=(k,))) for k in ("user_id", "database_id")}
    assert by_key["user_id"]["row"].tolist() == by_key["database_id"]["row"].tolist() == found["row"].tolist()
    assert (found["group_key"] == "user_id").all()  # equal scores: the keys' order decides


def test_hours_are_judged_apart_and_the_result_does_not_depend_on_row_order() -> None:
    slow = _hour({1: 100, 5: 30}, factor={5: 2.5}, hour=10)
    calm = _hour({1: 100, 5: 30}, hour=11, seed=4)
    later = pa.array(calm.column("query_id").to_numpy() + 500)
    table = pa.concat_tables([slow, calm.set_column(calm.schema.get_field_index("query_id"), "query_id", later)])
    found = slower_group_runs(table, params=GroupParams(keys=("user_id",)))
    assert (found["span_start"] == DAY + dt.timedelta(hours=10)).all() and len(found) > 0
    order = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = slower_group_runs(table.take(order), params=GroupParams(keys=("user_id",)))
    assert shuffled["query_id"].tolist() == found["query_id"].tolist()


def test_the_alert_carries_its_groups_evidence_through_the_anomaly_contract() -> None:
    table = _hour({1: 100, 5: 30}, factor={5: 2.5})
    params = GroupParams(keys=("user_id",))
    found = slower_group_runs(table, params=params)
    evidence = group_evidence_columns(found, params)
    keys = pa.table({"instance_id": found["instance_id"].to_numpy(), "query_id": found["query_id"].to_numpy(),
                     **evidence})
    scored = table.drop_columns(["is_anomaly"]).join(keys, ["instance_id", "query_id"], join_type="inner")
    rows = anomaly_rows(scored, thresholds=lambda _version: 1.0).to_pylist()
    assert len(rows) == len(found)
    first = rows[0]
    features = orjson.loads(first["features"])
    assert first["reason"] == GROUP_REASON and features["evidence_signal"] == GROUP_SIGNAL
    assert features["evidence_unit"] == "ms" and first["pred_ms"] == 3_000.0
    assert "user 5" in features["reference"] and "10:00-11:00 UTC" in features["reference"]
    assert "one of 30 of user 5's queries on this instance" in features["reference"]


def test_deferred_flags_score_a_log_day_as_the_step_flags_it() -> None:
    table = _hour({1: 100, 5: 30}, factor={5: 2.5})
    # every query its own statement: no streak of the persistence rule, which runs first
    statements = [f"s{q}" for q in table.column("query_id").to_pylist()]
    table = table.append_column("feature_fingerprint", pa.array(statements))
    step = slower_group_runs(table)
    log = table.drop_columns(["pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly"])
    persistent, flags = deferred_flags(log, table.column("pred_mean_ms").to_numpy(),
                                       table.column("pred_q_ms").to_numpy(), np.zeros(table.num_rows, dtype=bool),
                                       np.ones(table.num_rows, dtype=bool), "v1", None)
    assert not persistent.any() and np.flatnonzero(flags).tolist() == sorted(step["row"].tolist())


def _usual(table: pa.Table) -> np.ndarray:
    return np.full(table.num_rows, math.log1p(USUAL_WAIT_MS))


def test_one_users_queries_waiting_seconds_longer_than_their_usual_wait_are_flagged_on_the_wait() -> None:
    # user 5's queries routed to a starved queue: 3-40 s where its statements and the instance wait 0.5 s
    table = _hour({1: 120, 2: 90, 5: 30}, waits={5: 8_000.0})
    waited = slower_group_runs(table, queue_reference=_usual(table))
    assert _users(waited) == {5} and len(waited) == 30
    assert (waited["signal"] == QUEUE_GROUP_SIGNAL).all() and (waited["reason"] == QUEUE_GROUP_REASON).all()
    assert (waited["group_key"] == "user_id").all() and (waited["excess_ms"] >= 7_000).all()
    assert np.allclose(waited["expected_ms"], USUAL_WAIT_MS) and np.isnan(waited["group_z"]).all()
    # the wait is judged only with the detector's usual waits; the runtime is as expected
    assert slower_group_runs(table).empty
    # everyone waiting as usual, however long that is, is no group's news
    assert slower_group_runs(_hour({1: 120, 2: 90, 5: 30}), queue_reference=_usual(table)).empty


def test_a_whole_instance_waiting_seconds_longer_for_twenty_minutes_is_flagged_in_those_windows() -> None:
    table = _hour({1: 120, 2: 90, 3: 60})
    minute = (table.column("arrival_timestamp").to_numpy().astype("datetime64[s]").astype(np.int64) % 3_600) // 60
    storm = (minute >= 20) & (minute < 40)
    waited = table.column("queue_duration_ms").to_numpy() + np.where(storm, 4_000, 0)
    table = table.set_column(table.schema.get_field_index("queue_duration_ms"), "queue_duration_ms",
                             pa.array(waited))
    found = slower_group_runs(table, queue_reference=_usual(table))
    # a third of the hour: no user's, database's or query type's hour moved; the instance's two windows did
    assert set(found["group_key"]) == {"instance_id"} and storm[found["row"].to_numpy()].all()
    assert len(found) == storm.sum()
    assert set(found["span_start"]) == {DAY + dt.timedelta(hours=10, minutes=20), DAY + dt.timedelta(hours=10,
                                                                                                     minutes=30)}
    assert (found["span_end"] - found["span_start"] == dt.timedelta(minutes=10)).all()
    assert slower_group_runs(table, params=GroupParams(instance_windows=False), queue_reference=_usual(table)).empty
    evidence = group_evidence_columns(found, GroupParams())
    assert "of this instance's queries 10:20-10:30 UTC whose median waited" in evidence["reference"][0].as_py()


def test_an_hour_the_whole_instance_waits_through_is_the_instances_not_each_users() -> None:
    table = _hour({1: 120, 2: 90, 5: 30}, waits={1: 8_000.0, 2: 8_000.0, 5: 8_000.0})
    found = slower_group_runs(table, queue_reference=_usual(table))
    assert set(found["group_key"]) == {"instance_id"} and len(found) == table.num_rows  # its six windows
    # without the contrast every user, the database and the query type would wait longer too
    plain = slower_group_runs(table, params=GroupParams(contrast=False, instance_windows=False),
                              queue_reference=_usual(table))
    assert "user_id" in set(plain["group_key"]) and "instance_id" not in set(plain["group_key"])
    assert len(plain) == table.num_rows


@pytest.mark.parametrize(("change", "named"), [
    ({"keys": ("user_id", "table_id")}, "keys"),
    ({"keys": ()}, "keys"),
    ({"min_queries": 1}, "min_queries"),
    ({"floor": 0.0}, "floor"),
    ({"z_threshold": float("nan")}, "z_threshold"),
    ({"min_scale": 2.0}, "min_scale"),
    ({"window_ms": 7 * 60_000}, "window_ms"),
])
def test_invalid_constants_are_refused_naming_the_parameter(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        GroupParams(**change)


def test_an_hour_an_instance_waits_through_every_day_is_not_flagged_a_storm_at_another_hour_is() -> None:
    """The usual wait knows the hour (:meth:`FeatureBuilder.usual_wait`): a recurring daily peak of waits is
    the instance's rule, not its anomaly; the same extra wait at an hour that never had it is."""
    from workbench.ml._testing import generated_log
    from workbench.ml.features import FeatureBuilder

    log = generated_log(days=3, rows_per_day=6000, seed=5)
    inst = log.column("instance_id").to_numpy()
    stamps = log.column("arrival_timestamp").to_numpy()
    hour = stamps.astype("datetime64[h]").astype(np.int64) % 24
    day = stamps.astype("datetime64[D]")
    ids, counts = np.unique(inst, return_counts=True)
    busiest = ids[np.argmax(counts)]
    peak = int(np.bincount(hour[inst == busiest]).argmax())
    last = day.max()
    storm_hour = next(h for h in np.argsort(-np.bincount(hour[(inst == busiest) & (day == last)], minlength=24))
                      if abs(int(h) - peak) > 1)  # another busy hour of the last day, never a peak before
    queue = log.column("queue_duration_ms").to_numpy().astype(float)
    queue = np.where((inst == busiest) & (np.random.default_rng(0).random(len(inst)) < 0.3), 1_000.0, queue)
    mine = (inst == busiest) & ~log.column("was_cached").to_numpy(zero_copy_only=False).astype(bool)
    storm = mine & (day == last) & (hour == storm_hour)
    queue = np.where(mine & (hour == peak), queue + 20_000.0, queue) + np.where(storm, 8_000.0, 0.0)
    log = log.set_column(log.schema.get_field_index("queue_duration_ms"), "queue_duration_ms",
                         pa.array(np.rint(queue).astype(np.int64)))
    builder = FeatureBuilder().fit(log.filter(pa.array(day < last)))
    rows = log.filter(pa.array(day == last))
    exec_ms = rows.column("execution_duration_ms")
    rows = rows.append_column("pred_mean_ms", exec_ms).append_column("pred_q_ms", exec_ms).append_column(
        "model_version", pa.array(["v1"] * rows.num_rows)).append_column(
        "is_anomaly", pa.array([False] * rows.num_rows))
    known = builder.reference_source(rows) == 0
    rows_hour = hour[day == last]
    found = slower_group_runs(rows, known, queue_reference=builder.usual_wait(rows))
    flagged_hours = set(rows_hour[found["row"].to_numpy()].tolist())
    assert storm_hour in flagged_hours and peak not in flagged_hours
    # against the usual wait of any hour, the daily peak would have been flagged too
    plain = slower_group_runs(rows, known, queue_reference=builder.queue_reference(rows))
    assert peak in set(rows_hour[plain["row"].to_numpy()].tolist())


def _rules(rows: list[tuple[str, int, str, str, int, float]], measure: str = "runtime") -> pd.DataFrame:
    """A usual-hours frame of one ``measure``: ``(model_version, instance_id, group_key, group_value, hour,
    excess)`` rows."""
    return pd.DataFrame(rows, columns=["model_version", "instance_id", "group_key", "group_value", "hour",
                                       "excess"]).assign(measure=measure)


def test_a_group_that_runs_slower_at_that_hour_as_a_rule_is_judged_past_its_rule() -> None:
    table = _hour({1: 120, 2: 90, 5: 24}, factor={5: 2.0})
    keys = GroupParams(keys=("user_id",))
    assert _users(slower_group_runs(table, params=keys)) == {5}
    # user 5 runs twice its expectation at 10:00 every day: its hour is as usual
    assert slower_group_runs(table, params=keys, usual_hours=_rules([("v1", 1, "user_id", "5", 10, math.log(2.0))])
                             ).empty
    # a rule of another hour, another version, another user or instance, or a smaller one, does not excuse it
    for rule in (("v1", 1, "user_id", "5", 11, math.log(2.0)), ("v0", 1, "user_id", "5", 10, math.log(2.0)),
                 ("v1", 1, "user_id", "2", 10, math.log(2.0)), ("v1", 2, "user_id", "5", 10, math.log(2.0)),
                 ("v1", 1, "database_id", "5", 10, math.log(2.0))):
        assert _users(slower_group_runs(table, params=keys, usual_hours=_rules([rule]))) == {5}, rule
    # the rule is subtracted, not a veto: three times slower against a rule of 1.2x is still slower
    worse = _hour({1: 120, 2: 90, 5: 24}, factor={5: 3.0})
    found = slower_group_runs(worse, params=keys, usual_hours=_rules([("v1", 1, "user_id", "5", 10, math.log(1.2))]))
    assert _users(found) == {5} and (found["group_ratio"] < 3.0 / 1.2 * 1.3).all()
    assert (found["expected_ms"] > 3_000.0 * 1.19).all()  # the expectation the evidence shows is the hour's


def test_a_group_that_waits_longer_at_that_hour_as_a_rule_is_judged_past_its_rule() -> None:
    table = _hour({1: 120, 2: 90, 5: 30}, waits={5: 8_000.0})
    usual = _usual(table)
    assert _users(slower_group_runs(table, queue_reference=usual)) == {5}
    # user 5's loads wait in a saturated queue every day at 10:00 (about 17x its statements' usual wait)
    rule = [("v1", 1, "user_id", "5", 10, math.log(8_500.0 / USUAL_WAIT_MS))]
    assert slower_group_runs(table, queue_reference=usual, usual_hours=_rules(rule, "queue")).empty
    # a runtime rule says nothing of the wait
    assert _users(slower_group_runs(table, queue_reference=usual, usual_hours=_rules(rule))) == {5}


def test_usual_group_hours_keeps_the_hours_a_group_is_slower_on_two_days_not_one() -> None:
    rng = np.random.default_rng(0)
    n = 3 * 24 * 40
    arrival = [DAY + dt.timedelta(seconds=int(s)) for s in np.sort(rng.uniform(0, 3 * 86_400, n))]
    hour = np.array([a.hour for a in arrival])
    day = np.array([a.day for a in arrival])
    user = rng.choice([1, 2], n)
    residual = rng.normal(0.0, 0.2, n)
    residual += np.where((user == 1) & (hour == 15), math.log(2.0), 0.0)  # every afternoon
    residual += np.where((user == 2) & (hour == 9) & (day == day.min()), math.log(3.0), 0.0)  # one morning
    rows = pa.table({"instance_id": [4] * n, "arrival_timestamp": pa.array(arrival, pa.timestamp("us", tz="UTC")),
                     "user_id": user, "database_id": [7] * n, "query_type": ["select"] * n})
    judged = np.ones(n, dtype=bool)
    usual = usual_group_hours(rows, {"runtime": residual}, judged, keys=("user_id",)).to_pandas()
    rule = usual[(usual["group_value"] == "1") & (usual["hour"] == 15)]
    assert len(rule) == 1 and rule["excess"].iloc[0] == pytest.approx(math.log(2.0), abs=0.15)
    assert usual[(usual["group_value"] == "2") & (usual["hour"] == 9)].empty
    # the other 46 hours are noise: a rule is what an hour exceeds by a standard error of its median, so
    # few of them have one (half would have a positive median), and those are a few hundredths
    noise = usual[(usual["group_value"] != "1") | (usual["hour"] != 15)]
    assert len(noise) <= 46 // 3 and (noise["excess"] < 0.1).all()
    assert (usual["excess"] > 0).all() and set(usual["group_key"]) == {"user_id"}
    assert set(usual["measure"]) == {"runtime"}
    # each measure has its own rules: the same residuals read as waits give the same hours, as waits
    both = usual_group_hours(rows, {"runtime": residual, "queue": residual}, judged, keys=("user_id",)).to_pandas()
    for measure in ("runtime", "queue"):
        mine = both[both["measure"] == measure].drop(columns="measure").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, usual.drop(columns="measure"))
    # rows not judged (a never-seen statement, a cache hit) say nothing
    afternoon = (user == 1) & (hour == 15)
    assert usual_group_hours(rows, {"runtime": residual}, ~afternoon, keys=("user_id",)).to_pandas().query(
        "group_value == '1' and hour == 15").empty


def test_the_queries_with_joins_running_slower_are_a_part_of_the_instance_too() -> None:
    # A distribution style that broadcasts: every third query of each user joins, and those run 2.5x their
    # expectation for the hour; no user, database or query type is slower at the median.
    from workbench.analysis.slower_groups import JOIN_SHAPE, group_column

    plain = _hour({1: 90, 2: 90})
    ids = np.asarray(plain.column("query_id").to_pylist())
    joins = np.where(ids % 3 == 0, 2, 0)
    runtime = plain.column("execution_duration_ms").to_numpy() * np.where(joins > 0, 2.5, 1.0)
    table = plain.set_column(plain.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                             pa.array(runtime.astype(np.int64))).append_column("num_joins", pa.array(joins, pa.int64()))
    assert group_column(table, JOIN_SHAPE).to_pylist() == ["joins" if j else "no joins" for j in joins]
    found = slower_group_runs(table)
    assert len(found) > 20 and set(found["group_key"]) == {JOIN_SHAPE} and set(found["group_value"]) == {"joins"}
    assert (np.asarray(found["query_id"]) % 3 == 0).all()  # only the joins, none of the scans
    # without the column (a log or shard of an older schema) the plan shape is no group
    assert slower_group_runs(plain.set_column(plain.schema.get_field_index("execution_duration_ms"),
                                              "execution_duration_ms", pa.array(runtime.astype(np.int64)))).empty
    evidence = group_evidence_columns(found, GroupParams())
    assert "one of 60 of this instance's queries with joins 10:00-11:00 UTC" in evidence["reference"][0].as_py()
    # a NULL num_joins is in no plan-shape group
    nulls = table.set_column(table.schema.get_field_index("num_joins"), "num_joins",
                             pa.array([None] * table.num_rows, pa.int64()))
    assert slower_group_runs(nulls).empty
