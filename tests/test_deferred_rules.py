"""The deferred step's rules are entries of one registry: a rule added there is run in its place after the
others, among the rows they left, and its reasons, columns and metric follow from its entry."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workbench.analysis import deferred
from workbench.analysis._judged import RULE_RESULT, empty_result
from workbench.ml.evaluate import deferred_metric_reasons

DAY = dt.datetime(2024, 3, 7, tzinfo=dt.UTC)


def _rows(n: int = 6) -> pa.Table:
    return pa.table({
        "instance_id": pa.array([1] * n, pa.int64()), "query_id": pa.array(range(n), pa.int64()),
        "arrival_timestamp": pa.array([DAY + dt.timedelta(minutes=i) for i in range(n)],
                                      pa.timestamp("us", tz="UTC")),
        "execution_duration_ms": pa.array([100] * n, pa.int64()), "feature_fingerprint": [f"s{i}" for i in range(n)],
        "query_type": ["select"] * n, "user_id": pa.array([7] * n, pa.int64()),
        "database_id": pa.array([1] * n, pa.int64()), "num_joins": pa.array([0] * n, pa.int64()),
        "queue_duration_ms": pa.array([0] * n, pa.int64()), "was_cached": [False] * n, "was_aborted": [False] * n,
        "pred_mean_ms": [100.0] * n, "pred_q_ms": [300.0] * n, "model_version": ["v1"] * n,
        "is_anomaly": [False] * n})


def _flag_every_other(seen: list) -> deferred.DeferredRule:
    """A rule flagging the even rows, recording which rows the earlier rules had taken when it ran."""

    def flag(rows: pa.Table, day: deferred.DayInputs, params: object, taken: np.ndarray) -> pd.DataFrame:
        seen.append(taken.copy())
        idx = [i for i in range(0, rows.num_rows, 2) if not taken[i]]
        if not idx:
            return empty_result(RULE_RESULT)
        return pd.DataFrame({"row": idx, "instance_id": 1, "query_id": idx, "model_version": "v1",
                             "signal": "test_signal", "reason": "test_reason", "expected_ms": 1.0,
                             "observed_ms": 2.0, "excess_ms": 1.0, "group_key": "k", "group_value": "v",
                             "span_start": pd.Timestamp(DAY), "span_end": pd.Timestamp(DAY), "group_queries": 1,
                             "group_ratio": 2.0, "group_z": np.nan, "score": 1.0, "exec_ratio": 2.0}
                            ).astype(RULE_RESULT)

    return deferred.DeferredRule("test runs", ("test_reason",), ("num_joins",), flag)


def test_a_rule_added_to_the_registry_runs_after_the_others_and_its_entry_names_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    rules = dict(deferred.DEFERRED_RULES)
    rules["test"] = _flag_every_other(seen)
    monkeypatch.setattr(deferred, "DEFERRED_RULES", rules)
    rows = _rows()
    persistent, rest = deferred.deferred_runs(rows, np.ones(rows.num_rows, dtype=bool), None)
    assert persistent.empty and rest["query_id"].tolist() == [0, 2, 4] and set(rest["reason"]) == {"test_reason"}
    assert len(seen) == 1 and not seen[0].any()  # run once, after the others, which flagged nothing here
    assert deferred_metric_reasons()["test runs"] == ("test_reason",)
    # a row an earlier rule flagged is the earlier rule's: the added rule sees it taken
    monkeypatch.setattr(deferred, "DEFERRED_RULES", {"first": _flag_every_other([]), "second": rules["test"]})
    persistent, rest = deferred.deferred_runs(rows, None, None)
    assert persistent["query_id"].tolist() == [0, 2, 4] and rest.empty
    assert seen[-1].tolist() == [True, False, True, False, True, False]


def test_persistence_comes_first_reasons_are_unique_and_rules_without_their_input_skip_the_day() -> None:
    rules = deferred.DEFERRED_RULES
    assert next(iter(rules)) == "persistence"  # counted apart: a settled day's persistent_anomalies
    assert deferred.DEFERRED_REASONS[:1] == rules["persistence"].reasons
    assert len(set(deferred.DEFERRED_REASONS)) == len(deferred.DEFERRED_REASONS)
    assert len(set(deferred_metric_reasons())) == len(rules)
    rows = _rows()
    day = deferred.DayInputs(known=np.ones(rows.num_rows, dtype=bool))
    taken = np.zeros(rows.num_rows, dtype=bool)
    assert rules["moved"].flag(rows, day, None, taken) is None  # no homes given
    assert rules["record"].flag(rows, day, None, taken) is None  # no never-seen mask given
    assert rules["record"].flag(rows, deferred.DayInputs(unseen=np.ones(rows.num_rows, dtype=bool)), None,
                                taken).empty
