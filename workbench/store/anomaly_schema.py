"""The columns and the idempotency key of the lakehouse's ``anomalies`` table.

A module of its own (pyarrow only): the anomaly contract and the scoring app use the schema
without loading DuckDB; :mod:`workbench.store.lakehouse` re-exports both names.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

__all__ = ["ANOMALY_KEY", "ANOMALY_SCHEMA"]

_TSZ = pa.timestamp("us", tz="UTC")

#: Columns of ``lake.anomalies`` (``inserted_at`` is set by the writer).
ANOMALY_SCHEMA: Final = pa.schema([
    pa.field("instance_id", pa.int64(), nullable=False),
    pa.field("query_id", pa.int64(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("arrival_timestamp", _TSZ, nullable=False),
    pa.field("user_id", pa.int64()),
    pa.field("database_id", pa.int64()),
    pa.field("query_type", pa.string()),
    pa.field("cluster_size", pa.int64()),
    pa.field("true_ms", pa.float64()),  # actual execution_duration_ms
    pa.field("pred_ms", pa.float64()),  # prediction used for the decision
    pa.field("pred_mean_ms", pa.float64()),
    pa.field("pred_q_ms", pa.float64()),
    pa.field("excess_ms", pa.float64()),  # true - pred (positive = slower than expected)
    pa.field("under_ratio", pa.float64()),  # true / max(pred, 1)
    pa.field("expected_ms", pa.float64()),  # the statement's median runtime (its instance's when never seen)
    pa.field("score", pa.float64()),
    pa.field("reason", pa.string()),
    pa.field("features", pa.string()),  # JSON text
    pa.field("inserted_at", _TSZ, nullable=False),
])
#: The idempotency key.
ANOMALY_KEY: Final[tuple[str, ...]] = ("instance_id", "query_id", "model_version")
