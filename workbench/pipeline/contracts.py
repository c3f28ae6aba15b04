"""The ``redshift.anomalies`` message contract, in one place.

One JSON object per message, key = the instance id as text, header ``schema`` =
:data:`ANOMALY_CONTRACT_VERSION`. Fields (:data:`ANOMALY_FIELDS`; ``?`` = may be null/absent):

``instance_id`` int, ``query_id`` int, ``model_version`` str, ``arrival_timestamp`` ISO-8601 UTC str,
``user_id`` int?, ``database_id`` int?, ``query_type`` str?, ``cluster_size`` int?,
``execution_duration_ms`` number? (actual; null for a queue/spill alert on a row without it),
``queue_duration_ms`` number?, ``compile_duration_ms``
number?, ``pred_mean_ms`` number, ``pred_q_ms`` number?, ``expected_ms`` number?, ``score`` number?,
``threshold`` number?, ``reason`` str?, ``features`` object?, and the alert's evidence:
``evidence_signal`` str? (exec, queue, scan, spill, compile; ``exec_persistent`` for a run the
scoring app's persistence step flags, :mod:`workbench.analysis.persistence`; ``exec_group`` and
``queue_group`` for a query of a group that runs slower or waits longer,
:mod:`workbench.analysis.slower_groups`; ``exec_trend`` for a run of a statement that creeps,
:mod:`workbench.analysis.trend`; ``statement_moved`` for a run of another instance's statement,
:mod:`workbench.analysis.moved_statements`; ``exec_instance_record`` for a run far beyond a never-seen
instance's record of the day, :mod:`workbench.analysis.instance_record`), ``evidence_unit`` str? (ms, MB),
``expected_value``, ``observed_value``, ``excess_value`` number?, ``reference`` str? (what the
expectation was built from). Text longer than :data:`MAX_TEXT_CHARS` is cut (``features["truncated"]``
names each such field and its full length), so a message always fits one Kafka message.

This module is the one mapping of the anomaly contract, used by the scoring app, the anomaly
sink, the lakehouse tests and the notebook fixtures:

scored table -> message: :func:`anomaly_messages` (rows flagged ``is_anomaly``; the Redset
    columns of :data:`FEATURE_COLUMNS` go into ``features``);
message -> bytes: :func:`encode_anomaly` / :func:`anomaly_key` / :func:`anomaly_headers`;
message -> lakehouse row: :func:`anomaly_row` (a row of
    :data:`workbench.store.lakehouse.ANOMALY_SCHEMA`: ``true_ms`` = actual, ``pred_ms`` =
    ``pred_mean_ms``, ``excess_ms`` = true - pred, ``under_ratio`` = true / max(pred, 1), both
    null without an actual; queue, compile, threshold and the evidence fields go into
    ``features``);
scored table -> lakehouse rows: :func:`anomaly_rows` (the composition, what production stores;
    the scoring app's persistence step writes its flagged runs through it too).

Integers must fit int64, ``arrival_timestamp`` must be an ISO-8601 time that converts to UTC
inside years 1-9999, durations and predictions are >= 0 and the names (``model_version``, ``reason``,
``evidence_signal``, ``evidence_unit``) at most :data:`MAX_NAME_CHARS` characters; anything else raises
:class:`AnomalyContractError` (the sink dead-letters it, as it does an anomaly dated outside the
settings' ``event_time_min`` .. ``event_time_max``, reason ``event_time_out_of_range``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from workbench.pipeline.exceptions import AnomalyContractError
from workbench.store.anomaly_schema import ANOMALY_SCHEMA

__all__ = [
    "ANOMALY_CONTRACT_VERSION",
    "ANOMALY_FIELDS",
    "FEATURE_COLUMNS",
    "MAX_NAME_CHARS",
    "MAX_TEXT_CHARS",
    "anomaly_headers",
    "anomaly_key",
    "anomaly_messages",
    "anomaly_row",
    "anomaly_rows",
    "decode_anomalies",
    "encode_anomaly",
]

ANOMALY_CONTRACT_VERSION: Final = "anomaly-v1"
_INT, _NUM, _STR, _OBJ = "int", "number", "str", "object"
#: field -> (type, required)
ANOMALY_FIELDS: Final[dict[str, tuple[str, bool]]] = {
    "instance_id": (_INT, True), "query_id": (_INT, True), "model_version": (_STR, True),
    "arrival_timestamp": (_STR, True), "user_id": (_INT, False), "database_id": (_INT, False),
    "query_type": (_STR, False), "cluster_size": (_INT, False), "execution_duration_ms": (_NUM, False),
    "queue_duration_ms": (_NUM, False), "compile_duration_ms": (_NUM, False), "pred_mean_ms": (_NUM, True),
    "pred_q_ms": (_NUM, False), "expected_ms": (_NUM, False), "score": (_NUM, False), "threshold": (_NUM, False),
    "reason": (_STR, False), "features": (_OBJ, False),
    # Evidence of the deciding signal (workbench.ml.scorer.EXTRA_FIELDS); stored inside ``features``.
    "evidence_signal": (_STR, False), "evidence_unit": (_STR, False), "expected_value": (_NUM, False),
    "observed_value": (_NUM, False), "excess_value": (_NUM, False), "reference": (_STR, False),
}
#: Redset and Kafka columns copied into an anomaly's ``features`` object (model inputs, observed signals).
FEATURE_COLUMNS: Final = (
    "feature_fingerprint", "num_permanent_tables_accessed", "num_external_tables_accessed",
    "num_system_tables_accessed", "num_joins", "num_scans", "num_aggregations", "read_table_ids",
    "write_table_ids", "was_cached", "mbytes_scanned", "mbytes_spilled", "exec_ratio",
    "kafka_partition", "kafka_offset",
)
#: Longest text an anomaly message carries per field: a notice must fit one Kafka message (1 MB by
#: default) whatever an event held (the events topic takes 16 MB); the whole row stays in the shards.
#: A cut field is listed in ``features["truncated"]`` with its full length in characters.
MAX_TEXT_CHARS: Final = 16_384
#: Scored columns that become top-level message fields (the rest of ANOMALY_FIELDS is computed).
_FROM_SCORED: Final = tuple(n for n in ANOMALY_FIELDS if n not in ("threshold", "features"))
_EVIDENCE: Final = ("evidence_signal", "evidence_unit", "expected_value", "observed_value", "excess_value", "reference")
_CHECK: Final = {
    _INT: lambda v: type(v) is int and -(2**63) <= v < 2**63,
    _NUM: lambda v: type(v) is int or (type(v) is float and math.isfinite(v)),  # 1e999 parses as inf
    _STR: lambda v: type(v) is str,
    _OBJ: lambda v: isinstance(v, dict),
}
#: Fields that are durations (actual or predicted, ms): never negative.
_NON_NEGATIVE: Final = ("execution_duration_ms", "queue_duration_ms", "compile_duration_ms", "pred_mean_ms",
                        "pred_q_ms", "expected_ms")
#: Fields that name something (a version, a reason, a signal): short, unlike the texts features carry.
_NAMES: Final = ("model_version", "reason", "evidence_signal", "evidence_unit")
MAX_NAME_CHARS: Final = 200
_ROW_SCHEMA: Final = pa.schema([f.with_nullable(True) for f in ANOMALY_SCHEMA if f.name != "inserted_at"])


def _check(message: Mapping[str, Any]) -> None:
    if not isinstance(message, Mapping):
        msg = f"an anomaly message must be a JSON object. Got {type(message).__name__} instead."
        raise AnomalyContractError(msg)
    missing = [k for k, (_, req) in ANOMALY_FIELDS.items() if req and message.get(k) is None]
    if missing:
        msg = f"anomaly message lacks required fields {missing[:5]}; see workbench.pipeline.contracts."
        raise AnomalyContractError(msg)
    for name, (kind, _) in ANOMALY_FIELDS.items():
        v = message.get(name)
        if v is not None and not _CHECK[kind](v):
            msg = f"anomaly field {name!r} must be of type {kind} (integers within int64). Got {v!r:.80} instead."
            raise AnomalyContractError(msg)
    for name in _NON_NEGATIVE:
        v = message.get(name)
        if v is not None and v < 0:  # the event contract refuses negative durations: no scored row has one
            msg = f"anomaly field {name!r} is a duration and must be >= 0. Got {v!r} instead."
            raise AnomalyContractError(msg)
    for name in _NAMES:
        v = message.get(name)
        if v is not None and len(v) > MAX_NAME_CHARS:
            msg = (f"anomaly field {name!r} is a name of at most {MAX_NAME_CHARS} characters. Got one of "
                   f"{len(v):,}: {v[:40]!r}...")
            raise AnomalyContractError(msg)
    if "\x00" in message["model_version"]:
        # DuckLake inlines the key's text into the SQL that finds the files to check for the row: a NUL
        # ends that text, the SQL breaks and the whole batch of the sink fails, at every redelivery
        msg = f"anomaly field 'model_version' must not contain a NUL character. Got {message['model_version']!r:.80}."
        raise AnomalyContractError(msg)


def _parse_time(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        msg = (f"anomaly field 'arrival_timestamp' must be an ISO-8601 time inside years 1-9999 in UTC. "
               f"Got {text[:60]!r} instead.")
        raise AnomalyContractError(msg) from exc


def encode_anomaly(message: Mapping[str, Any]) -> bytes:
    """Validate and serialise one anomaly message (datetimes become ISO text)."""
    data = dict(message)
    ts = data.get("arrival_timestamp")
    if isinstance(ts, datetime):
        data["arrival_timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()
    _check(data)
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def anomaly_key(message: Mapping[str, Any]) -> bytes:
    """The message key: the instance id as text."""
    return str(int(message["instance_id"])).encode()


def anomaly_headers() -> list[tuple[str, bytes]]:
    """Headers of every anomaly message."""
    return [("schema", ANOMALY_CONTRACT_VERSION.encode())]


def anomaly_row(value: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """One anomaly message (bytes or parsed) as a lakehouse row; raises AnomalyContractError."""
    if value is None:
        raise AnomalyContractError("empty anomaly message value")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            message = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            msg = f"invalid JSON: {exc}"
            raise AnomalyContractError(msg) from exc
    else:
        message = value
    _check(message)
    true = None if message.get("execution_duration_ms") is None else float(message["execution_duration_ms"])
    pred = float(message["pred_mean_ms"])
    if true is not None and not math.isfinite(true - pred):  # two finite numbers near the float limit
        msg = f"anomaly fields execution_duration_ms ({true:g}) minus pred_mean_ms ({pred:g}) is not a finite number"
        raise AnomalyContractError(msg)
    features = dict(message.get("features") or {})
    for extra in ("queue_duration_ms", "compile_duration_ms", "threshold", *_EVIDENCE):
        if message.get(extra) is not None:
            features.setdefault(extra, message[extra])
    return {
        "instance_id": message["instance_id"], "query_id": message["query_id"],
        "model_version": message["model_version"], "arrival_timestamp": _parse_time(message["arrival_timestamp"]),
        "user_id": message.get("user_id"), "database_id": message.get("database_id"),
        "query_type": message.get("query_type"), "cluster_size": message.get("cluster_size"),
        "true_ms": true, "pred_ms": pred, "pred_mean_ms": pred,
        "pred_q_ms": None if message.get("pred_q_ms") is None else float(message["pred_q_ms"]),
        "excess_ms": None if true is None else true - pred,
        "under_ratio": None if true is None else true / max(pred, 1.0),
        "expected_ms": None if message.get("expected_ms") is None else float(message["expected_ms"]),
        "score": None if message.get("score") is None else float(message["score"]),
        "reason": message.get("reason"), "features": orjson.dumps(features).decode(),
    }


def anomaly_messages(scored: pa.Table | pa.RecordBatch, thresholds: Callable[[str], float | None] | None = None,
                     ) -> list[dict[str, Any]]:
    """The ``redshift.anomalies`` messages of the rows of ``scored`` flagged ``is_anomaly``.

    Parameters
    ----------
    scored : Table or RecordBatch
        Scorer output (Redset columns plus score columns; ``kafka_*`` columns optional).
    thresholds : callable, optional
        ``model_version -> detector threshold`` (goes into the message's ``threshold``).
    """
    table = pa.Table.from_batches([scored]) if isinstance(scored, pa.RecordBatch) else scored
    flags = table.column("is_anomaly")
    if flags.null_count == len(flags) or not pc.any(flags).as_py():
        return []
    rows = table.filter(pc.fill_null(flags, False))
    names = set(rows.column_names)
    top = [c for c in _FROM_SCORED if c in names]
    feats = [c for c in FEATURE_COLUMNS if c in names]
    out = []
    for row in rows.select(top + feats).to_pylist():
        message = {c: row[c] for c in top}
        message["features"] = {c: row[c] for c in feats}
        _cut_long_texts(message)
        if thresholds is not None:
            message["threshold"] = thresholds(message["model_version"])
        out.append(message)
    return out


def _cut_long_texts(message: dict[str, Any]) -> None:
    """Cut text values longer than :data:`MAX_TEXT_CHARS`, noting each in ``features["truncated"]``."""
    cut = {}
    for fields in (message, message["features"]):
        for name, value in fields.items():
            if type(value) is str and len(value) > MAX_TEXT_CHARS:
                cut[name] = len(value)
                fields[name] = value[:MAX_TEXT_CHARS]
    if cut:
        message["features"]["truncated"] = cut


def anomaly_rows(scored: pa.Table | pa.RecordBatch, thresholds: Callable[[str], float | None] | None = None,
                 ) -> pa.Table:
    """The lakehouse rows production stores for ``scored``: messages, encoded, decoded, mapped."""
    table, errors = decode_anomalies([encode_anomaly(m) for m in anomaly_messages(scored, thresholds)])
    if errors:
        raise AnomalyContractError(errors[0][1])
    return table


def decode_anomalies(values: Sequence[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Many anomaly messages as one table of lakehouse rows, plus ``(position, reason)`` errors.

    :func:`anomaly_row` checks every value that could not fit the lakehouse schema (int64
    range, times in years 1-9999), so one bad message is an error of its own and never fails the table.
    """
    rows, errors = [], []
    for i, value in enumerate(values):
        try:
            rows.append(anomaly_row(value))
        except AnomalyContractError as exc:
            errors.append((i, str(exc)))
    try:
        table = pa.Table.from_pylist(rows, schema=_ROW_SCHEMA)
    except (pa.ArrowInvalid, OverflowError) as exc:
        msg = f"anomaly rows do not fit ANOMALY_SCHEMA: {exc}"
        raise AnomalyContractError(msg) from exc
    return table, errors
