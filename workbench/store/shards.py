"""Arrow IPC shards of scored events: ``<shards_dir>/date=YYYY-MM-DD/p{partition:03d}-o{offset:012d}.arrow``.

A shard holds the events of one Kafka partition starting at ``first_offset`` (Feather v2, lz4),
with every Redset column, ``kafka_partition``/``kafka_offset`` and the score columns (null while
unscored). Its name depends only on (day, partition, first offset), and it is written to a temp
file in the same folder and ``os.replace``\\ d, so reprocessing after a crash *replaces* a shard
instead of duplicating it, and readers never see a half-written file.

Events stored before any model existed carry ``model_version = null``;
:func:`rescore_unscored` scores those rows later and rewrites their shards under the same names.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from workbench._fs import atomic_path
from workbench.data.schema import REDSET_SCHEMA
from workbench.exceptions import WorkbenchError

__all__ = [
    "SCORE_FIELDS",
    "SHARD_SCHEMA",
    "ShardError",
    "list_days",
    "read_shards",
    "rescore_unscored",
    "shard_paths",
    "write_shard",
]

logger = logging.getLogger(__name__)

#: The model's per-query outputs, null while an event is unscored. The scorer produces exactly these.
SCORE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("pred_mean_ms", pa.float64()),
    pa.field("pred_q_ms", pa.float64()),
    pa.field("score", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("model_version", pa.string()),
)
SHARD_SCHEMA = pa.schema(
    [
        *REDSET_SCHEMA.remove_metadata(),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        *SCORE_FIELDS,
    ]
)
_SCORE_NAMES = tuple(f.name for f in SCORE_FIELDS)
_DAY_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_SHARD_RE = re.compile(r"^p\d{3,}-o\d{12,}\.arrow$")


class ShardError(WorkbenchError, ValueError):
    """A shard cannot be written or read (wrong columns, bad arguments)."""


class _Scorer(Protocol):
    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch: ...


def _day(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        msg = f"A shard day must be a date or 'YYYY-MM-DD'. Got {value!r} instead."
        raise ShardError(msg) from None


def _conform(table: pa.Table | pa.RecordBatch) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [f.name for f in SHARD_SCHEMA if f.name not in table.column_names and f.name not in _SCORE_NAMES]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        msg = (f"A shard needs every Redset column plus kafka_partition and kafka_offset; missing "
               f"({len(missing)}): {shown}. Score columns may be absent (they are stored as null).")
        raise ShardError(msg)
    arrays = []
    for field in SHARD_SCHEMA:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=SHARD_SCHEMA)


def shard_name(partition: int, first_offset: int) -> str:
    """Deterministic file name of a shard."""
    return f"p{partition:03d}-o{first_offset:012d}.arrow"


def _atomic_feather(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        feather.write_feather(table, tmp, compression="lz4")


def write_shard(directory: Path, date: dt.date | str, partition: int, first_offset: int,
                table: pa.Table | pa.RecordBatch) -> Path:
    """Write (or atomically replace) one shard; returns its path.

    Parameters
    ----------
    directory : Path
        ``settings.shards_dir``.
    date : date or str
        Event day (UTC) of the rows.
    partition, first_offset : int
        Kafka partition and offset of the shard's first event (they name the file).
    table : Table or RecordBatch
        Redset columns, ``kafka_partition``, ``kafka_offset`` and optionally the score columns.
    """
    if partition < 0 or first_offset < 0:
        msg = f"partition and first_offset must be >= 0. Got {partition} and {first_offset} instead."
        raise ShardError(msg)
    path = Path(directory) / f"date={_day(date).isoformat()}" / shard_name(partition, first_offset)
    _atomic_feather(_conform(table), path)
    logger.debug("shard written path=%s", path)
    return path


def list_days(directory: Path) -> list[dt.date]:
    """Days that have at least one shard, ascending."""
    root = Path(directory)
    if not root.is_dir():
        return []
    days = []
    for child in root.iterdir():
        m = _DAY_RE.match(child.name)
        if m and child.is_dir() and any(_SHARD_RE.match(p.name) for p in child.iterdir()):
            days.append(dt.date.fromisoformat(m.group(1)))
    return sorted(days)


def shard_paths(directory: Path, days: Iterable[dt.date | str] | None = None) -> list[Path]:
    """Complete shard files (temp files ignored) of the given days, sorted by day then name."""
    wanted = list_days(directory) if days is None else sorted({_day(d) for d in days})
    paths: list[Path] = []
    for day in wanted:
        folder = Path(directory) / f"date={day.isoformat()}"
        if folder.is_dir():
            paths += sorted(p for p in folder.iterdir() if _SHARD_RE.match(p.name))
    return paths


def read_shards(directory: Path, days: Iterable[dt.date | str] | None = None,
                columns: list[str] | None = None) -> pa.Table:
    """All shards of ``days`` (default: every day) as one table, optionally projected."""
    if columns is not None:
        unknown = [c for c in columns if c not in SHARD_SCHEMA.names]
        if unknown:
            msg = f"Unknown shard columns {unknown[:5]}; valid names are SHARD_SCHEMA.names."
            raise ShardError(msg)
    schema = SHARD_SCHEMA if columns is None else pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    tables = [feather.read_table(p, columns=columns, memory_map=False) for p in shard_paths(directory, days)]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([t.cast(schema) for t in tables])


def rescore_unscored(directory: Path, scorer: _Scorer, days: Iterable[dt.date | str] | None = None) -> int:
    """Score the rows with ``model_version`` null and rewrite their shards in place.

    Already scored rows keep their values. Returns the number of rows scored (0 when the
    scorer has no model yet).
    """
    total = 0
    for path in shard_paths(directory, days):
        table = feather.read_table(path, memory_map=False)
        unscored = pc.is_null(table.column("model_version")).to_numpy(zero_copy_only=False)
        if not unscored.any():
            continue
        idx = np.flatnonzero(unscored)
        scored = pa.Table.from_batches([scorer.score(table.take(idx))])
        if pc.all(pc.is_null(scored.column("model_version"))).as_py():
            return total  # no model yet: nothing to do anywhere
        columns = []
        for name in table.column_names:
            if name in _SCORE_NAMES:
                col = table.column(name).combine_chunks()
                new = scored.column(name).combine_chunks().cast(col.type)
                columns.append(pc.replace_with_mask(col, pa.array(unscored), new))
            else:
                columns.append(table.column(name))
        _atomic_feather(pa.Table.from_arrays(columns, schema=table.schema), path)
        total += len(idx)
    logger.info("rescored unscored rows=%d", total)
    return total
