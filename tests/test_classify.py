"""Classification rules (pulse-study 3.2): every branch, every boundary, scalar == vectorised."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.analysis.classify import CLASSES, classify_batch, classify_query
from workbench.analysis.exceptions import MissingColumnsError
from workbench.data.schema import REDSET_SCHEMA

BASE: dict[str, Any] = {
    "was_cached": False,
    "query_type": "select",
    "execution_duration_ms": 0,
    "mbytes_scanned": 0,
    "mbytes_spilled": 0,
    "queue_duration_ms": 0,
    "num_joins": 0,
    "num_aggregations": 0,
    "num_scans": 0,
}
# cpu: ratio = 2000 / (99 + 1) = 20.0 exactly; io: ratio = 1220 / (19999 + 1) = 0.061 exactly
CPU = {"num_joins": 2, "mbytes_scanned": 99, "execution_duration_ms": 2001}
IO = {"mbytes_scanned": 19999, "execution_duration_ms": 1219, "num_scans": 2}
QUEUE = {"queue_duration_ms": 1500, "execution_duration_ms": 1500}

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("all zero", {}, "normal"),
    ("all null", dict.fromkeys(BASE), "normal"),
    ("missing keys", {"__drop__": True}, "normal"),
    # rule 0: cached first, even when another rule matches
    ("cached beats network", {"was_cached": True, "query_type": "copy", "execution_duration_ms": 9999},
     "normal"),
    ("cached beats cpu", {"was_cached": True, **CPU}, "normal"),
    ("cached beats queue", {"was_cached": True, **QUEUE}, "normal"),
    ("cached null is false", {"was_cached": None, "query_type": "copy", "execution_duration_ms": 501},
     "network_bound"),
    # rule 1: network
    ("copy 501", {"query_type": "copy", "execution_duration_ms": 501}, "network_bound"),
    ("copy exactly 500", {"query_type": "copy", "execution_duration_ms": 500}, "normal"),
    ("UNLOAD upper case", {"query_type": "UNLOAD", "execution_duration_ms": 501}, "network_bound"),
    ("select 501 is not network", {"query_type": "select", "execution_duration_ms": 501}, "normal"),
    ("null type is not network", {"query_type": None, "execution_duration_ms": 501}, "normal"),
    ("network before queue", {"query_type": "copy", **QUEUE}, "network_bound"),
    # rule 2: cpu
    ("cpu", {**CPU, "mbytes_scanned": 98}, "cpu_bound"),
    ("cpu ratio exactly 20.0", {**CPU, "execution_duration_ms": 2000}, "normal"),
    ("cpu via aggs", {**CPU, "num_joins": 0, "num_aggregations": 2, "mbytes_scanned": 50}, "cpu_bound"),
    ("cpu joins exactly 1", {**CPU, "num_joins": 1, "mbytes_scanned": 50}, "normal"),
    ("cpu needs scanned > 0", {**CPU, "mbytes_scanned": 0}, "normal"),
    ("cpu exec exactly 1000", {"num_joins": 2, "mbytes_scanned": 1, "execution_duration_ms": 1000},
     "normal"),
    ("cpu exec 1001", {"num_joins": 2, "mbytes_scanned": 1, "execution_duration_ms": 1001}, "cpu_bound"),
    ("copy never cpu", {**CPU, "mbytes_scanned": 50, "query_type": "copy", "execution_duration_ms": 400},
     "normal"),
    # rule 3: io
    ("io", IO, "io_bound"),
    ("io ratio exactly 0.061", {**IO, "execution_duration_ms": 1220}, "normal"),
    ("io scanned exactly 2000", {"mbytes_scanned": 2000, "execution_duration_ms": 1001, "num_scans": 2},
     "normal"),  # ratio 1001/2001 > 0.061
    ("io scanned exactly 2000 low ratio",
     {"mbytes_scanned": 2000, "execution_duration_ms": 100, "num_scans": 2}, "normal"),  # exec <= 1000
    ("io scanned 1999", {**IO, "mbytes_scanned": 1999, "execution_duration_ms": 1001}, "normal"),
    ("io via spill", {**IO, "num_scans": 0, "mbytes_spilled": 1}, "io_bound"),
    ("io scans exactly 1, no spill", {**IO, "num_scans": 1}, "normal"),
    ("io exec exactly 1000", {**IO, "execution_duration_ms": 1000}, "normal"),
    ("io scanned 2000 boundary hit",
     {"mbytes_scanned": 2000, "execution_duration_ms": 1001, "num_scans": 2, "__ratio_ok__": True},
     "normal"),
    ("unload never io", {**IO, "query_type": "unload", "execution_duration_ms": 500}, "normal"),
    ("cpu before io", {"num_joins": 2, "mbytes_scanned": 2000, "execution_duration_ms": 100_000,
                       "num_scans": 2}, "cpu_bound"),
    # rule 4: queue
    ("queue == exec", QUEUE, "queue_wlm_bound"),
    ("queue < exec", {**QUEUE, "queue_duration_ms": 1499}, "normal"),
    ("queue exactly 1000", {"queue_duration_ms": 1000, "execution_duration_ms": 10}, "normal"),
    ("queue 1001", {"queue_duration_ms": 1001, "execution_duration_ms": 10}, "queue_wlm_bound"),
    ("queue exec 0", {"queue_duration_ms": 5000, "execution_duration_ms": 0}, "normal"),
    ("queue complexity exactly 4", {**QUEUE, "num_scans": 2, "num_joins": 1, "num_aggregations": 1},
     "normal"),
    ("queue complexity 3", {**QUEUE, "num_scans": 1, "num_joins": 1, "num_aggregations": 1},
     "queue_wlm_bound"),
    ("queue for copy at 500", {"query_type": "copy", "queue_duration_ms": 1001, "execution_duration_ms": 500},
     "queue_wlm_bound"),
    ("io before queue", {**IO, "queue_duration_ms": 5000}, "io_bound"),
]


def _row(overrides: dict[str, Any]) -> dict[str, Any]:
    row = {**BASE, **{k: v for k, v in overrides.items() if not k.startswith("__")}}
    if overrides.get("__drop__"):
        row = {}
    return row


def _batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    fields = [REDSET_SCHEMA.field(name) for name in BASE]
    schema = pa.schema([f.with_nullable(True) for f in fields])
    full = [{name: r.get(name) for name in BASE} for r in rows]
    return pa.RecordBatch.from_pylist(full, schema=schema)


@pytest.mark.parametrize(("name", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rules(name: str, overrides: dict[str, Any], expected: str) -> None:
    row = _row(overrides)
    assert classify_query(row) == expected
    assert classify_batch(_batch([row])).to_pylist() == [expected]


def test_boundaries_are_exact_floats() -> None:
    assert 2000 / (99 + 1) == 20.0
    assert 1220 / (19999 + 1) == 0.061


def test_batch_of_all_cases_keeps_order() -> None:
    rows = [_row(o) for _, o, _ in CASES]
    assert classify_batch(_batch(rows)).to_pylist() == [e for _, _, e in CASES]


def test_missing_column_is_explained() -> None:
    batch = pa.RecordBatch.from_pylist([{"query_type": "copy"}])
    with pytest.raises(MissingColumnsError, match="execution_duration_ms"):
        classify_batch(batch)


small = st.one_of(st.none(), st.integers(0, 5))
ms = st.one_of(st.none(), st.integers(0, 3000), st.integers(0, 10**9))
mb = st.one_of(st.none(), st.integers(0, 50), st.integers(1900, 30_000), st.integers(0, 10**8))
row_strategy = st.fixed_dictionaries({
    "was_cached": st.one_of(st.none(), st.booleans()),
    "query_type": st.one_of(st.none(), st.sampled_from(["select", "COPY", "copy", "Unload", "insert", ""])),
    "execution_duration_ms": ms,
    "mbytes_scanned": mb,
    "mbytes_spilled": st.one_of(st.none(), st.integers(0, 3)),
    "queue_duration_ms": ms,
    "num_joins": small,
    "num_aggregations": small,
    "num_scans": small,
})


@settings(max_examples=300, deadline=None)
@given(st.lists(row_strategy, min_size=1, max_size=40))
def test_scalar_and_vectorised_agree(rows: list[dict[str, Any]]) -> None:
    expected = [classify_query(r) for r in rows]
    assert classify_batch(_batch(rows)).to_pylist() == expected
    assert set(expected) <= set(CLASSES)
