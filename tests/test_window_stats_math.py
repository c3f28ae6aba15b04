"""Window partial aggregates: exact sums, mergeability, finalize, approximate p95."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.analysis.classify import classify_query
from workbench.analysis.windows import (
    CLASS_COUNT_KEYS,
    WindowMergeError,
    finalize,
    hist_bin,
    merge,
    merge_all,
    partial_aggregates,
)
from workbench.data.schema import REDSET_SCHEMA

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def make_rows(n: int, seed: int = 0, instances: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append({
            "instance_id": rng.randrange(instances) + 2**40,  # 64-bit ids
            "cluster_size": rng.choice([None, 2, 4, 8]),
            "user_id": 1, "database_id": 1, "query_id": i,
            "arrival_timestamp": T0 + timedelta(seconds=i * 7 + rng.randrange(5)),
            "queue_duration_ms": rng.choice([None, 0, 1500, rng.randrange(10**6)]),
            "compile_duration_ms": rng.choice([None, 0, 0, 40, 10_000, rng.randrange(10**6)]),
            "execution_duration_ms": rng.choice([None, 0, 600, 2000, rng.randrange(10**7)]),
            "was_cached": rng.choice([None, False, True]),
            "was_aborted": rng.choice([None, False, False, True]),
            "query_type": rng.choice(["select", "copy", "unload", None]),
            "mbytes_scanned": rng.choice([None, 0, 50, 2500, rng.randrange(10**6)]),
            "mbytes_spilled": rng.choice([None, 0, rng.randrange(10**5)]),
            "num_joins": rng.choice([None, 0, 2]),
            "num_scans": rng.choice([None, 0, 2]),
            "num_aggregations": rng.choice([None, 0, 2]),
        })
    return rows


def to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema(
        [REDSET_SCHEMA.field(k).with_nullable(True) for k in rows[0]]))


def reference(rows: list[dict[str, Any]], window_ms: int = 600_000) -> dict[tuple[int, int], dict]:
    out: dict[tuple[int, int], dict] = {}
    for r in rows:
        ms = int(r["arrival_timestamp"].timestamp() * 1000)
        key = (r["instance_id"], ms // window_ms * window_ms)
        o = out.setdefault(key, {"total_queries": 0, **dict.fromkeys(CLASS_COUNT_KEYS, 0),
                                 "spilled_mb": 0, "queue_ms": 0, "exec_ms": 0, "cluster_size": None,
                                 "cached_queries": 0, "aborted_queries": 0, "spilled_queries": 0,
                                 "queued_queries": 0, "slow_queries": 0, "queue_max_ms": 0,
                                 "compile_ms": 0, "compile_max_ms": 0, "long_compile_queries": 0,
                                 "pace_queries": 0, "pace_log_sum": 0})
        o["total_queries"] += 1
        o[classify_query(r) + "_queries"] += 1
        o["spilled_mb"] += r["mbytes_spilled"] or 0
        o["queue_ms"] += r["queue_duration_ms"] or 0
        o["exec_ms"] += r["execution_duration_ms"] or 0
        o["cached_queries"] += bool(r["was_cached"])
        o["aborted_queries"] += bool(r["was_aborted"])
        o["spilled_queries"] += (r["mbytes_spilled"] or 0) > 0
        o["queued_queries"] += (r["queue_duration_ms"] or 0) > 1000
        o["slow_queries"] += (r["execution_duration_ms"] or 0) > 1000
        o["queue_max_ms"] = max(o["queue_max_ms"], r["queue_duration_ms"] or 0)
        o["compile_ms"] += r["compile_duration_ms"] or 0
        o["long_compile_queries"] += (r["compile_duration_ms"] or 0) > 10_000
        o["compile_max_ms"] = max(o["compile_max_ms"], r["compile_duration_ms"] or 0)
        scanned, ran = r["mbytes_scanned"] or 0, r["execution_duration_ms"]
        if ran is not None and scanned >= 100 and not r["was_cached"] and not r.get("was_aborted"):
            o["pace_queries"] += 1
            o["pace_log_sum"] += round(1000 * math.log(max(ran, 1) / scanned))
        if r["cluster_size"] is not None:
            o["cluster_size"] = r["cluster_size"]
    return out


def test_partials_match_reference_exactly() -> None:
    rows = make_rows(2000)
    ref = reference(rows)
    parts = partial_aggregates(to_batch(rows))
    assert {(p["instance_id"], p["window_start_ms"]) for p in parts} == set(ref)
    for p in parts:
        exp = ref[(p["instance_id"], p["window_start_ms"])]
        for key, value in exp.items():
            assert p[key] == value, key
        assert sum(p[k] for k in CLASS_COUNT_KEYS) == p["total_queries"]
        assert isinstance(p["exec_ms"], int)


def test_flag_counts_reach_the_window_row_and_old_partials_still_merge() -> None:
    rows = make_rows(80, seed=4, instances=1)  # 80 x 7 s: one window
    (whole,) = merge_all(partial_aggregates(to_batch(rows)))
    row = finalize(whole)
    assert row["cached_queries"] == sum(bool(r["was_cached"]) for r in rows) > 0
    assert row["aborted_queries"] == sum(bool(r["was_aborted"]) for r in rows) > 0
    assert 0 < row["queued_queries"] <= row["total_queries"]
    assert row["max_queue_time_ms"] == max(r["queue_duration_ms"] or 0 for r in rows)
    assert row["total_compile_time_ms"] == sum(r["compile_duration_ms"] or 0 for r in rows) > 0
    assert row["max_compile_time_ms"] == max(r["compile_duration_ms"] or 0 for r in rows) > 0
    assert row["long_compile_queries"] == sum((r["compile_duration_ms"] or 0) > 10_000 for r in rows) > 0
    paced = [r for r in rows if r["execution_duration_ms"] is not None and (r["mbytes_scanned"] or 0) >= 100
             and not r["was_cached"] and not r["was_aborted"]]
    assert row["pace_queries"] == len(paced) > 5
    assert row["pace_log_sum"] == sum(round(1000 * math.log(max(r["execution_duration_ms"], 1) / r["mbytes_scanned"]))
                                      for r in paced)
    # A partial kept in window state by an earlier version lacks the new keys: it merges as zero counts.
    old = {k: v for k, v in partial_aggregates(to_batch(rows[:1]))[0].items()
           if k not in ("cached_queries", "aborted_queries", "spilled_queries", "queued_queries", "slow_queries",
                        "queue_max_ms", "compile_ms", "compile_max_ms", "long_compile_queries", "pace_queries",
                        "pace_log_sum")}
    new = partial_aggregates(to_batch(rows[1:2]))[0]
    merged = merge(old, new)
    assert merged["total_queries"] == 2 and merged["aborted_queries"] == new["aborted_queries"]
    assert merged["compile_ms"] == new["compile_ms"] and merged["compile_max_ms"] == new["compile_max_ms"]
    assert merged["long_compile_queries"] == new["long_compile_queries"]
    assert (merged["pace_queries"], merged["pace_log_sum"]) == (new["pace_queries"], new["pace_log_sum"])
    assert finalize(old)["pace_queries"] == 0  # an old partial finalises with no paced queries
    # A batch without was_aborted (a log made elsewhere) counts no aborts rather than failing.
    no_abort = [{k: v for k, v in r.items() if k != "was_aborted"} for r in rows[:50]]
    assert all(p["aborted_queries"] == 0 for p in partial_aggregates(to_batch(no_abort)))
    no_compile = [{k: v for k, v in r.items() if k != "compile_duration_ms"} for r in rows[:50]]
    assert all(p["compile_ms"] == p["compile_max_ms"] == p["long_compile_queries"] == 0
               for p in partial_aggregates(to_batch(no_compile)))


def test_split_batches_merge_to_the_same_result() -> None:
    rows = make_rows(1500, seed=1)
    whole = merge_all(partial_aggregates(to_batch(rows)))
    pieces = []
    cut = [0, 17, 400, 401, 999, 1500]
    for a, b in itertools.pairwise(cut):
        pieces += partial_aggregates(to_batch(rows[a:b]))
    random.Random(3).shuffle(pieces)
    assert merge_all(pieces) == whole


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=2, max_size=6), st.integers(0, 10**6))
def test_merge_associative_over_any_split(cuts: list[int], seed: int) -> None:
    rows = make_rows(300, seed=seed % 1000, instances=1)
    bounds = sorted({0, 300, *cuts})
    parts: list[dict] = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            parts += partial_aggregates(to_batch(rows[a:b]))
    left = merge_all(parts)
    right = merge_all(reversed(parts))
    assert left == right == merge_all(partial_aggregates(to_batch(rows)))


def test_cluster_size_last_non_null_by_arrival() -> None:
    rows = make_rows(3, instances=1)
    for r, size in zip(rows, [4, 8, None], strict=True):
        r["cluster_size"] = size
    (p,) = partial_aggregates(to_batch(rows))
    assert p["cluster_size"] == 8
    a = partial_aggregates(to_batch(rows[1:2]))[0]
    b = partial_aggregates(to_batch(rows[0:1]))[0]
    assert merge(a, b)["cluster_size"] == 8  # arrival time decides, not merge order


def test_finalize_row() -> None:
    rows = make_rows(50, instances=1)
    for r in rows:
        r["execution_duration_ms"] = 1000
    (p,) = merge_all(partial_aggregates(to_batch(rows)))
    row = finalize(p)
    assert row["window_start"].tzinfo is not None
    assert row["window_end"] - row["window_start"] == timedelta(minutes=10)
    assert row["total_exec_time_ms"] == 1000 * row["total_queries"]
    assert row["p95_exec_time_ms"] == 1000.0  # clipped to exact min/max
    assert row["anomalies"] == 0


def test_p95_within_bin_error() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(8, 2, 5000).astype(np.int64) + 1
    rows = make_rows(len(values), instances=1)
    for r, v in zip(rows, values, strict=True):
        r["execution_duration_ms"] = int(v)
        r["arrival_timestamp"] = T0
    (p,) = partial_aggregates(to_batch(rows))
    exact = float(np.sort(values)[int(np.ceil(0.95 * len(values))) - 1])
    assert abs(finalize(p)["p95_exec_time_ms"] - exact) / exact < 0.07


def test_hist_bins() -> None:
    assert list(hist_bin(np.array([0, 0.5, 1, 10, 99, 10**8, 10**12]))) == [0, 0, 1, 21, 40, 161, 161]


def test_merge_rejects_other_window() -> None:
    rows = make_rows(200, instances=1)
    parts = partial_aggregates(to_batch(rows))
    assert len(parts) >= 2
    with pytest.raises(WindowMergeError, match="window_start_ms"):
        merge(parts[0], parts[1])


def test_null_keys_skipped_and_empty_batch() -> None:
    rows = make_rows(5, instances=1)
    rows[0]["instance_id"] = None
    parts = partial_aggregates(to_batch(rows))
    assert sum(p["total_queries"] for p in parts) == 4
    assert partial_aggregates(to_batch(rows).slice(0, 0)) == []
