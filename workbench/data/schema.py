"""The Redset query-log schema (Redshift query metadata) as the workbench reads and writes it.

Redset publishes 24 columns per query. ``arrival_timestamp`` is UTC (Redset's own files store it
without a zone; the workbench writes it as ``timestamp[us, tz=UTC]`` and accepts both).
Table-id lists are comma-separated strings, sizes are MB, durations ms.

Generated logs may carry two label columns (:data:`LABEL_COLUMNS`) that say which rows were
injected anomalies. They are for evaluation only: the replay never sends them and no model
uses them as features.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "COLUMNS",
    "LABEL_COLUMNS",
    "LABEL_SCHEMA",
    "REDSET_SCHEMA",
    "SCHEMA_VERSION",
]

#: Bumped whenever a message's column set or types change; travels in every message header.
SCHEMA_VERSION = "redset/1"

TIMESTAMP = pa.timestamp("us", tz="UTC")

REDSET_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.int64(), nullable=False),
        pa.field("cluster_size", pa.int64()),  # NULL for serverless instances
        pa.field("user_id", pa.int64()),
        pa.field("database_id", pa.int64()),
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("arrival_timestamp", TIMESTAMP, nullable=False),
        pa.field("compile_duration_ms", pa.int64()),
        pa.field("queue_duration_ms", pa.int64()),
        pa.field("execution_duration_ms", pa.int64()),
        pa.field("feature_fingerprint", pa.string()),  # NULL for result-cache hits
        pa.field("was_aborted", pa.bool_()),
        pa.field("was_cached", pa.bool_()),
        pa.field("cache_source_query_id", pa.int64()),
        pa.field("query_type", pa.string()),
        pa.field("num_permanent_tables_accessed", pa.int64()),
        pa.field("num_external_tables_accessed", pa.int64()),
        pa.field("num_system_tables_accessed", pa.int64()),
        pa.field("read_table_ids", pa.string()),  # comma-separated table ids
        pa.field("write_table_ids", pa.string()),
        pa.field("mbytes_scanned", pa.int64()),
        pa.field("mbytes_spilled", pa.int64()),
        pa.field("num_joins", pa.int64()),
        pa.field("num_scans", pa.int64()),
        pa.field("num_aggregations", pa.int64()),
    ],
    metadata={"schema_version": SCHEMA_VERSION},
)

COLUMNS: tuple[str, ...] = tuple(REDSET_SCHEMA.names)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("label_anomaly", pa.bool_(), nullable=False),
        pa.field("label_kind", pa.string()),  # NULL when label_anomaly is false
    ]
)

LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_SCHEMA.names)
