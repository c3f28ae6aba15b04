"""A tiny seeded query log for the ML tests (independent of the full data generator).

Rows follow :data:`~workbench.data.schema.REDSET_SCHEMA` plus the label columns. Each instance
has a set of fingerprints with a typical runtime, scan and spill; a small share of rows gets one
of four injected anomalies (``slow_fingerprint``, ``spill_storm``, ``queue_storm``,
``scan_explosion``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from workbench.data.schema import LABEL_SCHEMA, REDSET_SCHEMA

__all__ = ["toy_log"]

_KINDS = ("slow_fingerprint", "spill_storm", "queue_storm", "scan_explosion")


def toy_log(*, days: int = 2, instances: int = 3, rows_per_day: int = 4000, seed: int = 0,
            anomaly_rate: float = 0.01, start: dt.date = dt.date(2024, 3, 1)) -> pa.Table:
    """A labelled log of ``days * rows_per_day`` rows sorted by arrival time."""
    rng = np.random.default_rng(seed)
    n = days * rows_per_day
    n_fp = 40
    inst = rng.integers(0, instances, n)
    fp_idx = np.minimum(rng.zipf(1.6, n) - 1, n_fp - 1)
    fp_base = np.exp(rng.normal(6.0, 2.0, (instances, n_fp)))  # typical exec ms
    fp_scan = np.exp(rng.normal(4.0, 2.0, (instances, n_fp)))
    fp_joins = rng.integers(0, 6, (instances, n_fp))
    qtypes = np.array(["select", "insert", "copy", "delete", "ctas"])
    fp_qtype = rng.integers(0, len(qtypes), (instances, n_fp))
    secs = np.sort(rng.uniform(0, days * 86400, n))
    start_us = int(dt.datetime.combine(start, dt.time(), dt.UTC).timestamp() * 1e6)
    ts = start_us + (secs * 1e6).astype(np.int64)
    exec_ms = fp_base[inst, fp_idx] * np.exp(rng.normal(0, 0.25, n))
    scan = fp_scan[inst, fp_idx] * np.exp(rng.normal(0, 0.2, n))
    spill = np.where(rng.random(n) < 0.02, scan * 0.1, 0.0)
    queue = np.where(rng.random(n) < 0.03, rng.exponential(300, n), 0.0)
    label = rng.random(n) < anomaly_rate
    kind = np.where(label, rng.integers(0, len(_KINDS), n), -1)
    exec_ms = np.where(kind == 0, exec_ms * rng.uniform(20, 100, n), exec_ms)
    spill = np.where(kind == 1, scan * rng.uniform(5, 20, n) + 5000, spill)
    exec_ms = np.where(kind == 1, exec_ms * 3, exec_ms)
    queue = np.where(kind == 2, rng.uniform(60_000, 600_000, n), queue)
    scan = np.where(kind == 3, scan * rng.uniform(50, 500, n), scan)
    exec_ms = np.where(kind == 3, exec_ms * 5, exec_ms)
    fps = np.array([f"{i:02d}{j:062x}" for i in range(instances) for j in range(n_fp)]).reshape(instances, n_fp)
    cols = {
        "instance_id": inst.astype(np.int64),
        "cluster_size": np.where(inst % 2 == 0, 4, 8).astype(np.int64),
        "user_id": rng.integers(0, 20, n),
        "database_id": rng.integers(0, 3, n),
        "query_id": np.arange(n, dtype=np.int64),
        "arrival_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "compile_duration_ms": rng.integers(0, 50, n),
        "queue_duration_ms": queue.astype(np.int64),
        "execution_duration_ms": exec_ms.astype(np.int64),
        "feature_fingerprint": fps[inst, fp_idx],
        "was_aborted": np.zeros(n, bool),
        "was_cached": np.zeros(n, bool),
        "cache_source_query_id": pa.nulls(n, pa.int64()),
        "query_type": qtypes[fp_qtype[inst, fp_idx]],
        "num_permanent_tables_accessed": fp_joins[inst, fp_idx] + 1,
        "num_external_tables_accessed": np.zeros(n, np.int64),
        "num_system_tables_accessed": np.zeros(n, np.int64),
        "read_table_ids": np.array(["1,2", "3", "4,5,6", ""])[fp_idx % 4],
        "write_table_ids": np.array(["", "7"])[fp_idx % 2],
        "mbytes_scanned": scan.astype(np.int64),
        "mbytes_spilled": spill.astype(np.int64),
        "num_joins": fp_joins[inst, fp_idx],
        "num_scans": fp_joins[inst, fp_idx] + 1,
        "num_aggregations": fp_idx % 3,
    }
    arrays = [pa.array(cols[f.name], f.type) if not isinstance(cols[f.name], pa.Array) else cols[f.name]
              for f in REDSET_SCHEMA]
    kinds = np.array(_KINDS, dtype=object)[np.clip(kind, 0, None)]
    labels = [pa.array(label), pa.array(np.where(label, kinds, None), pa.string())]
    schema = pa.schema(list(REDSET_SCHEMA) + list(LABEL_SCHEMA))
    return pa.Table.from_arrays(arrays + labels, schema=schema)
