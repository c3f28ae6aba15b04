"""Arrow shards: deterministic names, atomic replace, temp files ignored, projection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
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


def _day_files(root: Path, day: dt.date = DAY) -> list[str]:
    return sorted(p.name for p in (root / f"date={day.isoformat()}").iterdir() if p.suffix == ".arrow")


def _write_batches(root: Path, partitions: int = 3, batches: int = 5, rows: int = 20) -> None:
    for part in range(partitions):
        for b in range(batches):
            write_shard(root, DAY, part, b * rows, _events(rows, b * rows, part))


def test_compaction_leaves_one_file_per_partition_with_the_same_rows(tmp_path: Path) -> None:
    from workbench.store.shards import compact_day

    _write_batches(tmp_path)
    before = read_shards(tmp_path).sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    assert len(shard_paths(tmp_path)) == 15
    assert compact_day(tmp_path, DAY) == 3
    assert _day_files(tmp_path) == [f"c00{p}-o000000000000-o000000000099.arrow" for p in range(3)]
    after = read_shards(tmp_path).sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    assert after.equals(before)
    assert compact_day(tmp_path, DAY) == 3  # idempotent


def test_reprocessing_after_compaction_replaces_rows(tmp_path: Path) -> None:
    from workbench.store.shards import compact_day

    _write_batches(tmp_path, partitions=1)
    compact_day(tmp_path, DAY)
    # a crash before the commit: the app re-reads offsets 30..69 in other batch sizes, now scored
    again = _events(40, 30, 0).append_column("model_version", pa.array(["v0002-2024-02-29"] * 40))
    write_shard(tmp_path, DAY, 0, 30, again)
    table = read_shards(tmp_path, dedupe=False)
    assert table.num_rows == 100  # replaced, not duplicated
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(100))
    assert pc.count(table.column("model_version")).as_py() == 40
    assert len(_day_files(tmp_path)) == 1
    write_shard(tmp_path, DAY, 0, 100, _events(10, 100, 0))  # a late event after the compacted range
    assert len(_day_files(tmp_path)) == 2 and read_shards(tmp_path).num_rows == 110


def test_a_compaction_killed_before_deleting_leaves_no_duplicates(tmp_path: Path) -> None:
    import shutil

    from workbench.store.shards import compact_day

    _write_batches(tmp_path, partitions=1)
    keep = tmp_path / "copy"
    shutil.copytree(tmp_path / "date=2024-03-01", keep)
    compact_day(tmp_path, DAY)
    for p in keep.iterdir():  # the state after the compacted file was renamed in, before the deletes
        shutil.copy(p, tmp_path / "date=2024-03-01" / p.name)
    assert len(shard_paths(tmp_path)) == 1
    assert read_shards(tmp_path, dedupe=False).num_rows == 100
    compact_day(tmp_path, DAY)
    assert len(_day_files(tmp_path)) == 1


def test_a_second_pass_replaces_the_first_passs_rows(tmp_path: Path) -> None:
    first = _events(50, 0, 0)
    write_shard(tmp_path, DAY, 0, 0, first)
    # replay reset: the same queries arrive again at later offsets, with a newer score
    second = first.set_column(first.schema.get_field_index("kafka_offset"), "kafka_offset",
                              pa.array(range(500, 550), pa.int64()))
    second = second.append_column("model_version", pa.array(["v0003-2024-02-29"] * 50))
    write_shard(tmp_path, DAY, 0, 500, second.slice(0, 30))  # the second pass got 30 rows far
    table = read_shards(tmp_path)
    assert table.num_rows == 50
    assert pc.count(table.column("model_version")).as_py() == 30
    assert read_shards(tmp_path, dedupe=False).num_rows == 80


def test_read_window_is_exact_and_canonical(tmp_path: Path) -> None:
    from workbench.store.shards import read_window

    write_shard(tmp_path, DAY, 1, 0, _events(30, 0, 1))
    write_shard(tmp_path, DAY, 0, 0, _events(30, 30, 0))
    a = read_window(tmp_path, DAY, DAY)
    b_root = tmp_path / "b"
    write_shard(b_root, DAY, 0, 30, _events(30, 30, 0))  # other file layout, other write order
    write_shard(b_root, DAY, 1, 0, _events(10, 0, 1))
    write_shard(b_root, DAY, 1, 10, _events(20, 10, 1))
    b = read_window(b_root, DAY, DAY)
    assert a.num_rows == 60 and a.equals(b)
    assert read_window(tmp_path, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)).num_rows == 0


def test_read_window_of_some_columns_is_the_whole_window_projected(tmp_path: Path) -> None:
    from workbench.store.shards import read_window

    events = _events(60, 0, 0)
    # Five events in this day's folder arrived the next day, outside the window: the filter drops them.
    ts = events.column("arrival_timestamp").cast(pa.int64()).to_numpy().copy()
    ts[:5] += 86_400_000_000
    events = events.set_column(events.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                               pa.array(ts, pa.int64()).cast(events.schema.field("arrival_timestamp").type))
    write_shard(tmp_path, DAY, 0, 0, events)
    again = _events(5, 20, 0).drop_columns(["kafka_partition", "kafka_offset"])
    again = again.append_column("kafka_partition", pa.array([1] * 5, pa.int32()))
    again = again.append_column("kafka_offset", pa.array(range(5), pa.int64()))
    write_shard(tmp_path, DAY, 1, 0, again)  # the same five queries again, later: they count once
    whole = read_window(tmp_path, DAY, DAY)
    assert whole.num_rows == 55
    for columns in (list(COLUMNS), ["query_id"], ["execution_duration_ms", "instance_id"]):
        projected = read_window(tmp_path, DAY, DAY, columns=columns)
        assert projected.column_names == columns
        assert projected.equals(whole.select(columns))
    inside = read_window(tmp_path, DAY, DAY, columns=["arrival_timestamp"]).column(0).cast(pa.int64()).to_numpy()
    assert np.all(np.diff(inside) >= 0) and inside.max() < ts[:5].min()


def test_retention_deletes_old_days(tmp_path: Path) -> None:
    from workbench.store.shards import delete_older_than

    for k in range(4):
        write_shard(tmp_path, DAY + dt.timedelta(days=k), 0, k * 10, _events(5, k * 10))
    assert delete_older_than(tmp_path, 2, today=DAY + dt.timedelta(days=3)) == [DAY]
    assert list_days(tmp_path) == [DAY + dt.timedelta(days=k) for k in (1, 2, 3)]
    with pytest.raises(ShardError, match="at least 1 day"):
        delete_older_than(tmp_path, 0, today=DAY)


def test_compaction_keeps_every_row_of_packed_messages(tmp_path: Path) -> None:
    """Packed messages put many rows at one Kafka offset; a row is (offset, instance_id, query_id)."""
    from workbench.store.shards import compact_day

    for batch in range(4):  # 4 shards of 5 messages x 10 rows each
        events = _events(50, offset=batch * 5)
        offsets = np.repeat(np.arange(batch * 5, batch * 5 + 5), 10)
        events = events.set_column(events.schema.get_field_index("kafka_offset"), "kafka_offset",
                                   pa.array(offsets, pa.int64()))
        events = events.set_column(events.schema.get_field_index("query_id"), "query_id",
                                   pa.array(np.arange(batch * 50, batch * 50 + 50), pa.int64()))
        write_shard(tmp_path, DAY, 0, batch * 5, events)
    before = read_shards(tmp_path, dedupe=False).num_rows
    assert before == 200
    assert compact_day(tmp_path, DAY) == 1
    after = read_shards(tmp_path, dedupe=False)
    assert after.num_rows == 200 and len(set(after.column("query_id").to_pylist())) == 200


def test_the_scoring_apps_compaction_runs_beside_the_loop_not_in_it(tmp_path: Path) -> None:
    """A day busy under its lock (a rescoring thread on it) does not hold the caller of the maintenance."""
    import fcntl
    import os
    import threading

    from workbench.config import Settings
    from workbench.pipeline.scoring._maintenance import ShardMaintenance

    class Status:
        def __init__(self) -> None:
            self.counters: dict[str, int] = {}

        def add(self, name: str, n: int = 1) -> None:
            self.counters[name] += n

    settings = Settings(home=tmp_path)
    for k in range(3):  # three files of partition 0: more than the two a settled day keeps
        write_shard(settings.shards_dir, DAY, 0, 100 * k, _events(10, 100 * k, 0))
    maintenance = ShardMaintenance(settings, Status(), window_days=7)  # type: ignore[arg-type]
    day_lock = os.open(settings.shards_dir / "date=2024-03-01" / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(day_lock, fcntl.LOCK_EX)  # someone else works on the day
    caller = threading.Thread(target=maintenance.run, args=(DAY + dt.timedelta(days=2),))  # the scoring loop
    try:
        caller.start()
        caller.join(2.0)
        assert not caller.is_alive() and maintenance.running  # the loop went on at once
        assert len(shard_paths(settings.shards_dir, [DAY])) == 3  # the compaction waits for the day
    finally:
        os.close(day_lock)
        caller.join(30)
    maintenance.join(30)
    assert not maintenance.running
    assert [p.name[0] for p in shard_paths(settings.shards_dir, [DAY])] == ["c"]
    counters = maintenance.status.counters
    assert (counters["shard_days_compacted"], counters["shard_days_deleted"]) == (1, 0)
    assert counters["residual_windows"] == 0  # its rows are unscored: the day's residual windows wait
    assert read_shards(settings.shards_dir).num_rows == 30


def _passes(root: Path, passes: int, rows: int = 40, per_file: int = 10, partition: int = 0,
            first_pass: int = 0) -> pa.Table:
    """``passes`` copies of the same ``rows`` queries on one partition, each pass at new offsets (a Reset)."""
    queries = _events(rows, 0, partition)
    for k in range(first_pass, first_pass + passes):
        base = k * rows
        copy = queries.set_column(queries.schema.get_field_index("kafka_offset"), "kafka_offset",
                                  pa.array(range(base, base + rows), pa.int64()))
        for start in range(0, rows, per_file):
            write_shard(root, DAY, partition, base + start, copy.slice(start, per_file))
    return queries


def test_compaction_keeps_only_the_latest_pass_of_a_replayed_day(tmp_path: Path) -> None:
    """Every pass of a replayed log added a whole copy that compaction kept (it dropped only copies at one
    offset): 85 Resets left 69 copies, 5.6 GB for a log of 83 MB, and a day's read needed 16 GB."""
    from workbench.store.shards import compact_day

    _passes(tmp_path, passes=5, partition=0)
    _passes(tmp_path, passes=2, partition=1)
    before = read_shards(tmp_path)
    assert read_shards(tmp_path, dedupe=False).num_rows == 280 and before.num_rows == 80
    assert compact_day(tmp_path, DAY) == 2
    assert _day_files(tmp_path) == ["c000-o000000000000-o000000000199.arrow",
                                    "c001-o000000000000-o000000000079.arrow"]
    raw = read_shards(tmp_path, dedupe=False)
    assert raw.num_rows == 80 and raw.equals(read_shards(tmp_path))  # one copy, in offset order
    assert read_shards(tmp_path).equals(before)  # what every reader sees is unchanged: the latest pass
    assert min(raw.column("kafka_offset").to_pylist()[:40]) == 160  # partition 0: its fifth pass
    _passes(tmp_path, passes=7, partition=0, first_pass=5)  # more passes: offsets above the compacted range
    assert compact_day(tmp_path, DAY) == 2 and read_shards(tmp_path, dedupe=False).num_rows == 80


def test_days_a_replay_sent_again_are_compacted_once_quiet(tmp_path: Path) -> None:
    """The watermark stands at the log's end while Resets send its days again: no day was compacted again
    (a two-day log: never), and 4,846 files piled up. A day is compacted once no writer has written it
    for the quiet time; before the log ended, only days the watermark settled (the first pass as ever)."""
    from workbench.config import Settings
    from workbench.pipeline.scoring._maintenance import ShardMaintenance

    class Status:
        counters: dict[str, int] = {}

        def add(self, name: str, n: int = 1) -> None:
            self.counters[name] = self.counters.get(name, 0) + n

    settings = Settings(home=tmp_path)
    _passes(settings.shards_dir, passes=3)
    maintenance = ShardMaintenance(settings, Status(), window_days=7)  # type: ignore[arg-type]
    maintenance.quiet_s = 0.5
    last_event_us = int(dt.datetime.combine(DAY, dt.time(23), dt.UTC).timestamp() * 1_000_000)

    def files_after(run: dt.date, ended_us: int | None) -> int:
        maintenance.run(run, ended_us=ended_us)
        maintenance.join(30)
        return len(shard_paths(settings.shards_dir, [DAY]))

    maintenance.note_stored({DAY})
    assert files_after(DAY, last_event_us) == 12  # not quiet yet
    import time

    time.sleep(0.6)
    assert files_after(DAY + dt.timedelta(days=1), None) == 12  # the log goes on: the day is not settled
    assert files_after(DAY, last_event_us) == 1  # the log ended, the day is quiet: one file
    _passes(settings.shards_dir, passes=2, first_pass=3)  # another Reset: two more passes
    maintenance.note_written({DAY: time.time()})  # reported by another scoring instance's heartbeat
    assert files_after(DAY, last_event_us) == 9
    time.sleep(0.6)
    assert files_after(DAY, last_event_us) == 1
    assert read_shards(settings.shards_dir, dedupe=False).num_rows == 40
    # A pass the sink wrote in one file per partition left the compacted file and that one: two files, under
    # the settled days' threshold, so the day kept two copies for good (CI: the shards were never one copy)
    _passes(settings.shards_dir, passes=1, first_pass=5, per_file=40)
    maintenance.note_stored({DAY})
    time.sleep(0.6)
    assert files_after(DAY, last_event_us) == 1
    assert read_shards(settings.shards_dir, dedupe=False).num_rows == 40
