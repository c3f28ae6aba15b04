"""Arrow shards: deterministic names, atomic replace, temp files ignored, projection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workbench.data.schema import COLUMNS
from workbench.ml._testing import generated_log
from workbench.store.shards import (
    SHARD_SCHEMA,
    ShardError,
    list_days,
    read_shards,
    shard_paths,
    write_shard,
)

DAY = dt.date(2024, 3, 1)


_LOG = generated_log(days=1, rows_per_day=400, seed=1).select(list(COLUMNS))


def _events(n: int = 100, offset: int = 0, partition: int = 0) -> pa.Table:
    t = _LOG.slice(offset % 100, n)
    assert t.num_rows == n
    # one query per (partition, offset): shards keep each (instance_id, query_id) once
    t = t.set_column(t.schema.get_field_index("query_id"), "query_id",
                     pa.array(range(partition * 1_000_000 + offset, partition * 1_000_000 + offset + n), pa.int64()))
    t = t.append_column("kafka_partition", pa.array([partition] * n, pa.int32()))
    return t.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))


def test_write_read_roundtrip_and_unscored_columns(tmp_path: Path) -> None:
    path = write_shard(tmp_path, DAY, 2, 1000, _events(50, 1000, 2))
    assert path == tmp_path / "date=2024-03-01" / "p002-o000000001000.arrow"
    table = read_shards(tmp_path)
    assert table.schema == SHARD_SCHEMA
    assert table.num_rows == 50
    assert table.column("model_version").null_count == 50
    assert list_days(tmp_path) == [DAY]
    projected = read_shards(tmp_path, days=["2024-03-01"], columns=["query_id", "kafka_offset"])
    assert projected.column_names == ["query_id", "kafka_offset"]


def test_rewrite_replaces_instead_of_duplicating(tmp_path: Path) -> None:
    events = _events(80)
    write_shard(tmp_path, DAY, 0, 0, events)
    scored = events.append_column("model_version", pa.array(["v0001-2024-02-29"] * 80))
    write_shard(tmp_path, DAY, 0, 0, scored)  # reprocessing after a crash: same name
    write_shard(tmp_path, DAY, 1, 0, _events(20, 0, 1))
    table = read_shards(tmp_path)
    assert table.num_rows == 100
    assert pc.count(table.column("model_version")).as_py() == 80
    assert len(shard_paths(tmp_path)) == 2


def test_temp_files_and_other_days_are_ignored(tmp_path: Path) -> None:
    write_shard(tmp_path, DAY, 0, 0, _events(10))
    write_shard(tmp_path, DAY + dt.timedelta(days=1), 0, 10, _events(5, 10))
    (tmp_path / "date=2024-03-01" / ".p000-o000000000099.arrow.abc.tmp").write_bytes(b"half")
    assert read_shards(tmp_path, days=[DAY]).num_rows == 10
    assert read_shards(tmp_path).num_rows == 15
    assert read_shards(tmp_path, days=[dt.date(2030, 1, 1)]).num_rows == 0
    assert list_days(tmp_path) == [DAY, DAY + dt.timedelta(days=1)]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="kafka_offset"):
        write_shard(tmp_path, DAY, 0, 0, _events(5).drop_columns(["kafka_offset"]))
    with pytest.raises(ShardError, match="YYYY-MM-DD"):
        write_shard(tmp_path, "yesterday", 0, 0, _events(5))
