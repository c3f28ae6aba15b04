"""Arrow IPC shards of scored events: ``<shards_dir>/date=YYYY-MM-DD/p{partition:03d}-o{offset:012d}.arrow``.

A shard holds the events of one Kafka partition starting at ``first_offset`` (Feather v2, lz4),
with every Redset column, ``kafka_partition``/``kafka_offset`` and the score columns (null while
unscored). Its name depends only on (day, partition, first offset), and it is written to a temp
file in the same folder and ``os.replace``\\ d, so reprocessing after a crash *replaces* a shard
instead of duplicating it, and readers never see a half-written file.

Events stored before any model existed carry ``model_version = null``;
:func:`rescore_unscored` scores those rows later and rewrites their shards under the same names.

Compaction (:func:`compact_day`)
    A finished day's shards are merged into one file per partition,
    ``c{partition:03d}-o{first:012d}-o{last:012d}.arrow``, named by the offset range it covers.
    The compacted file is written atomically first, then the files it covers are deleted; a
    crash in between leaves files that the name rules mark as covered (a ``p`` file whose first
    offset lies inside a ``c`` range of its partition, or a ``c`` file inside a wider one), and
    readers ignore them (the next compaction deletes them). A batch reprocessed after
    compaction that overlaps a ``c`` range is merged *into* that file (its rows replace the
    rows with the same offsets) instead of becoming a second copy. Every writer of a day folder
    (write, rescore, compact, retention) holds the day's lock (``fcntl.flock`` on ``.lock``).

Several writers on one home (N scoring instances)
    Files are owned by partition (a Kafka partition is consumed by one instance at a time), and
    every writer of a day folder holds the day's lock, so two instances never write the same file
    and compaction is safe while other partitions are written. Each instance also records, per
    partition it stores, the event-time range it has durably written (``_progress/p{NNN}.json``,
    after the shards) and, about once a second, a heartbeat with the partitions Kafka assigned it
    and which of them are idle (``_progress/i{slot}.json``). :func:`cluster_watermark` turns these
    into the event time *every* partition has passed: what the one elected trainer waits for.

On an object store (``WORKBENCH_SHARDS_DIR=s3://bucket/prefix``, any URL
:func:`pyarrow.fs.FileSystem.from_uri` takes)
    The same names and layout, through pyarrow's filesystems. An object store has atomic PUTs but
    no rename, so a shard is serialised in memory and written under its final key in one upload:
    readers see the whole object or none, and a rewrite after a crash replaces the object of the
    same (deterministic) name. Compaction uploads the merged file before it deletes what it
    covers. There is no cross-process lock on a day (the day lock serialises this process's
    threads only); what stays exact without it: files are owned by partition (one writer each),
    the trainer alone compacts and applies retention, covered files are ignored by readers, and
    a rescoring that finds a file gone passes over the day again.

One row per query (reset, seek back, reprocessing)
    :func:`read_shards` (and so training, rescoring and the notebooks) returns each
    ``(instance_id, query_id)`` once: the row of the latest pass, i.e. the highest
    ``(kafka_partition, kafka_offset)``. A replay reset or a seek backwards re-sends rows at new
    offsets; their shards are new files, and the newer rows win.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from workbench import defaults
from workbench._fs import atomic_path, write_atomic
from workbench.data.schema import REDSET_SCHEMA
from workbench.exceptions import WorkbenchError

__all__ = [
    "SCORE_FIELDS",
    "SHARD_SCHEMA",
    "ShardClock",
    "ShardError",
    "cluster_clock",
    "cluster_watermark",
    "compact_day",
    "dedupe_latest",
    "delete_older_than",
    "list_days",
    "log_ended_us",
    "maintain",
    "offset_base",
    "provisional_day",
    "read_shards",
    "read_window",
    "record_progress",
    "remove_heartbeat",
    "rescore_unscored",
    "set_provisional_day",
    "shard_paths",
    "write_heartbeat",
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
_SHARD_RE = re.compile(r"^p\d{3,}-o\d{12,}\.arrow$|^c\d{3,}-o\d{12,}-o\d{12,}\.arrow$")
_PLAIN_RE = re.compile(r"^p(\d{3,})-o(\d{12,})\.arrow$")
_COMPACT_RE = re.compile(r"^c(\d{3,})-o(\d{12,})-o(\d{12,})\.arrow$")
_KEY = ("instance_id", "query_id")
_ORDER = ("kafka_partition", "kafka_offset")
#: The canonical row order of :func:`read_window`.
_WINDOW_ORDER = ("arrival_timestamp", "instance_id", "query_id")


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


def compacted_name(partition: int, first_offset: int, last_offset: int) -> str:
    """Name of a compacted file covering offsets ``[first_offset, last_offset]`` of a partition."""
    return f"c{partition:03d}-o{first_offset:012d}-o{last_offset:012d}.arrow"


# --- where the shards live: a local folder or an object-store URL ------------------------------------
#: A shards location: a local folder, or a URL of a pyarrow filesystem (``s3://bucket/prefix``).
Location = Path | str


def is_url(directory: Location) -> bool:
    """Whether ``directory`` is an object-store URL (``scheme://...``) rather than a local folder."""
    return isinstance(directory, str) and "://" in directory


class _Local:
    """A local (or mounted) folder: temp file + ``os.replace`` writes, ``flock`` day locks."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def names(self, folder: PurePath) -> list[str]:
        try:
            return os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [child.name for child in self.root.iterdir() if child.is_dir()]

    def is_file(self, path: PurePath) -> bool:
        return Path(path).is_file()

    def read_table(self, path: PurePath, columns: list[str] | None = None) -> pa.Table:
        return feather.read_table(path, columns=columns, memory_map=False)

    def write_table(self, path: PurePath, table: pa.Table) -> None:
        with atomic_path(Path(path)) as tmp:
            feather.write_feather(table, tmp, compression="lz4")

    def delete(self, path: PurePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def read_bytes(self, path: PurePath) -> bytes:
        return Path(path).read_bytes()

    def write_bytes(self, path: PurePath, data: bytes) -> None:
        # No fsync: progress and heartbeats lost in a crash only make the watermark more conservative.
        write_atomic(Path(path), data, fsync=False)

    @contextlib.contextmanager
    def lock(self, folder: PurePath) -> Iterator[None]:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(folder) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def remove_folder(self, folder: PurePath) -> None:
        with self.lock(folder):
            doomed = Path(folder).with_name(f".deleting-{folder.name}")
            os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


#: Day locks of this process's threads on object stores (no cross-process lock there).
_REMOTE_LOCKS: dict[str, threading.Lock] = {}
_REMOTE_LOCKS_GUARD = threading.Lock()


class _Remote:
    """An object store through a pyarrow filesystem: one upload per object, no rename, no lock."""

    remote = True

    def __init__(self, url: str) -> None:
        from pyarrow import fs

        self._fs_mod = fs
        self.fs, base = _filesystem(url)
        self.root = PurePosixPath(base.rstrip("/"))

    def path(self, *parts: str) -> PurePosixPath:
        return self.root.joinpath(*parts)

    def _infos(self, folder: PurePath) -> list[Any]:
        selector = self._fs_mod.FileSelector(str(folder), allow_not_found=True, recursive=False)
        return self.fs.get_file_info(selector)

    def names(self, folder: PurePath) -> list[str]:
        return [info.base_name for info in self._infos(folder) if info.type == self._fs_mod.FileType.File]

    def folders(self) -> list[str]:
        return [info.base_name for info in self._infos(self.root) if info.type == self._fs_mod.FileType.Directory]

    def is_file(self, path: PurePath) -> bool:
        return self.fs.get_file_info(str(path)).type == self._fs_mod.FileType.File

    def read_bytes(self, path: PurePath) -> bytes:
        with self.fs.open_input_stream(str(path)) as stream:
            return stream.read()

    def read_table(self, path: PurePath, columns: list[str] | None = None) -> pa.Table:
        return feather.read_table(pa.BufferReader(self.read_bytes(path)), columns=columns, memory_map=False)

    def write_bytes(self, path: PurePath, data: bytes) -> None:
        # The object appears when the upload completes: whole or not at all, under its final key.
        with self.fs.open_output_stream(str(path)) as out:
            out.write(data)

    def write_table(self, path: PurePath, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        feather.write_feather(table, sink, compression="lz4")
        self.write_bytes(path, sink.getvalue().to_pybytes())

    def delete(self, path: PurePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(str(path))

    @contextlib.contextmanager
    def lock(self, folder: PurePath) -> Iterator[None]:
        with _REMOTE_LOCKS_GUARD:
            lock = _REMOTE_LOCKS.setdefault(str(folder), threading.Lock())
        with lock:
            yield

    def remove_folder(self, folder: PurePath) -> None:
        with self.lock(folder), contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(str(folder))


@lru_cache(maxsize=16)
def _filesystem(url: str) -> tuple[Any, str]:
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"WORKBENCH_SHARDS_DIR is not a folder or a URL pyarrow can open ({_redact(url)}): {exc}"
        raise ShardError(msg) from exc


def _redact(url: str) -> str:
    """``url`` without its query (which may carry ``secret_key=...``)."""
    return url.split("?", 1)[0]


def _store(directory: Location) -> _Local | _Remote:
    return _Remote(directory) if is_url(directory) else _Local(Path(directory))


def _day_dir(store: _Local | _Remote, day: dt.date | str) -> PurePath:
    return store.path(f"date={_day(day).isoformat()}")


@contextlib.contextmanager
def day_lock(directory: Location, day: dt.date | str) -> Iterator[PurePath]:
    """Exclusive lock of one day folder (every writer of the folder holds it); yields the folder.

    On an object store it serialises this process's threads only (see the module docstring).
    """
    store = _store(directory)
    folder = _day_dir(store, day)
    with store.lock(folder):
        yield folder


def _ranges(names: Iterable[str]) -> dict[int, list[tuple[int, int, str]]]:
    out: dict[int, list[tuple[int, int, str]]] = {}
    for name in names:
        m = _COMPACT_RE.match(name)
        if m:
            out.setdefault(int(m.group(1)), []).append((int(m.group(2)), int(m.group(3)), name))
    return out


def _live(names: Iterable[str]) -> list[str]:
    """The shard names of one folder that are not covered by a compacted file (sorted)."""
    names = [n for n in names if _SHARD_RE.match(n)]
    ranges = _ranges(names)
    live = []
    for name in names:
        m = _PLAIN_RE.match(name)
        if m:
            part, first = int(m.group(1)), int(m.group(2))
            if any(lo <= first <= hi for lo, hi, _ in ranges.get(part, ())):
                continue  # left by a compaction killed before it deleted what it covers
        else:
            c = _COMPACT_RE.match(name)
            assert c is not None
            part, lo, hi = int(c.group(1)), int(c.group(2)), int(c.group(3))
            if any(olo <= lo and hi <= ohi and (olo, ohi) != (lo, hi) for olo, ohi, _ in ranges[part]):
                continue  # an older compacted file inside a newer, wider one
        live.append(name)
    return sorted(live)


def write_shard(directory: Location, date: dt.date | str, partition: int, first_offset: int,
                table: pa.Table | pa.RecordBatch) -> PurePath:
    """Write (or atomically replace) one shard; returns its path.

    Parameters
    ----------
    directory : Path or str
        ``settings.shards_dir``: a folder, or an object-store URL (``s3://bucket/prefix``).
    date : date or str
        Event day (UTC) of the rows.
    partition, first_offset : int
        Kafka partition and offset of the shard's first event (they name the file).
    table : Table or RecordBatch
        Redset columns, ``kafka_partition``, ``kafka_offset`` and optionally the score columns.

    When the rows overlap a compacted file of the partition (reprocessing after compaction),
    they are merged into it, replacing the rows with the same offsets; the compacted path is
    returned. On an object store the path is the key inside the bucket (no scheme).
    """
    if partition < 0 or first_offset < 0:
        msg = f"partition and first_offset must be >= 0. Got {partition} and {first_offset} instead."
        raise ShardError(msg)
    data = _conform(table)
    store = _store(directory)
    folder = _day_dir(store, date)
    with store.lock(folder):
        offsets = data.column("kafka_offset")
        lo = int(pc.min(offsets).as_py()) if data.num_rows else first_offset
        hi = int(pc.max(offsets).as_py()) if data.num_rows else first_offset
        for clo, chi, name in _ranges(_live(store.names(folder))).get(partition, ()):
            if lo <= chi and clo <= hi:
                return _merge_into(store, folder, name, partition, data)
        path = folder / shard_name(partition, first_offset)
        store.write_table(path, data)
    logger.debug("shard written path=%s", path)
    return path


def _merge_into(store: _Local | _Remote, folder: PurePath, name: str, partition: int, data: pa.Table) -> PurePath:
    """Replace the rows of compacted file ``name`` that ``data`` re-delivers (same offsets)."""
    old = store.read_table(folder / name)
    fresh = pc.is_in(old.column("kafka_offset"), value_set=data.column("kafka_offset").combine_chunks())
    merged = pa.concat_tables([old.filter(pc.invert(fresh)), data]).sort_by([("kafka_offset", "ascending")])
    offsets = merged.column("kafka_offset")
    path = folder / compacted_name(partition, int(pc.min(offsets).as_py()), int(pc.max(offsets).as_py()))
    store.write_table(path, merged)
    if path.name != name:
        store.delete(folder / name)
    logger.info("reprocessed rows merged into a compacted shard path=%s rows=%d", path, data.num_rows)
    return path


def list_days(directory: Location) -> list[dt.date]:
    """Days that have at least one shard, ascending."""
    store = _store(directory)
    days = []
    for name in store.folders():
        m = _DAY_RE.match(name)
        if m and any(_SHARD_RE.match(n) for n in store.names(store.path(name))):
            days.append(dt.date.fromisoformat(m.group(1)))
    return sorted(days)


def shard_paths(directory: Location, days: Iterable[dt.date | str] | None = None) -> list[PurePath]:
    """Live shard files (temp files and files a compacted file covers ignored), by day then name.

    On an object store the paths are keys inside the bucket (``PurePosixPath``, no scheme).
    """
    store = _store(directory)
    wanted = list_days(directory) if days is None else sorted({_day(d) for d in days})
    paths: list[PurePath] = []
    for day in wanted:
        folder = _day_dir(store, day)
        paths += [folder / n for n in _live(store.names(folder))]
    return paths


def dedupe_latest(table: pa.Table) -> pa.Table:
    """One row per ``(instance_id, query_id)``: the one with the highest (partition, offset).

    Order of the remaining rows is kept. Needs the key and ``kafka_*`` columns.
    """
    if table.num_rows < 2:
        return table
    inst = table.column("instance_id").to_numpy()
    query = table.column("query_id").to_numpy()
    part = table.column("kafka_partition").to_numpy()
    off = table.column("kafka_offset").to_numpy()
    order = np.lexsort((np.arange(len(off)), off, part, query, inst))  # last of each key = the latest
    si, sq = inst[order], query[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (si[1:] != si[:-1]) | (sq[1:] != sq[:-1])
    if last.all():
        return table
    return table.take(np.sort(order[last]))


def read_shards(directory: Location, days: Iterable[dt.date | str] | None = None,
                columns: list[str] | None = None, *, dedupe: bool = True) -> pa.Table:
    """All shards of ``days`` (default: every day) as one table, optionally projected.

    With ``dedupe`` (default) each ``(instance_id, query_id)`` appears once (see the module
    docstring: the latest pass wins). ``directory`` is a folder or an object-store URL.
    """
    if columns is not None:
        unknown = [c for c in columns if c not in SHARD_SCHEMA.names]
        if unknown:
            msg = f"Unknown shard columns {unknown[:5]}; valid names are SHARD_SCHEMA.names."
            raise ShardError(msg)
    schema = SHARD_SCHEMA if columns is None else pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    read_cols = columns if columns is None or not dedupe else list(dict.fromkeys([*columns, *_KEY, *_ORDER]))
    wanted = list_days(directory) if days is None else sorted({_day(d) for d in days})
    tables = [t for day in wanted for t in _read_day(directory, day, read_cols)]
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    if dedupe:
        table = dedupe_latest(table)
        if columns is not None:
            table = table.select(columns)
    return table.cast(schema)


def _read_day(directory: Location, day: dt.date, columns: list[str] | None) -> list[pa.Table]:
    """One day's live files; listed again if a concurrent compaction deleted one mid-read."""
    store = _store(directory)
    for attempt in range(5):
        try:
            return [store.read_table(p, columns=columns) for p in shard_paths(directory, [day])]
        except FileNotFoundError:
            if attempt == 4:
                raise
    return []


def read_window(directory: Location, start: dt.date, end: dt.date, columns: list[str] | None = None) -> pa.Table:
    """Exactly the events with ``start <= arrival day <= end``, once each, in a canonical order.

    The order (arrival time, instance, query) does not depend on partitions, batch sizes or
    file layout, so the same log gives the same table (and the same model) at any replay speed.
    """
    days = [start + dt.timedelta(days=k) for k in range((end - start).days + 1)]
    # Only the wanted columns and the order's keys are read, filtered and sorted (a training reads
    # the Redset columns, not the scores stored beside them).
    read_cols = None if columns is None else list(dict.fromkeys([*columns, *_WINDOW_ORDER]))
    table = read_shards(directory, days=days, columns=read_cols)
    lo = pa.scalar(dt.datetime.combine(start, dt.time(), dt.UTC), pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC), pa.timestamp("us", tz="UTC"))
    ts = table.column("arrival_timestamp")
    inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
    if not pc.all(inside).as_py():  # a day's files hold that day's events: the filter is usually a copy
        table = table.filter(inside)
    table = table.sort_by([(name, "ascending") for name in _WINDOW_ORDER])
    return table if columns is None else table.select(columns)


#: Rows :func:`rescore_unscored` scores at once: the stream's batch size. A compacted file holds a
#: partition's whole day (360 k rows in the 4-day, 16-instance benchmark): scored in one call, the
#: scorer's per-row intermediates for all of them raised the scoring app's peak memory by ~430 MB.
#: A row's score does not depend on the rows scored with it (:mod:`workbench.ml.scorer`), so chunks
#: change nothing else.
RESCORE_CHUNK_ROWS = defaults.SCORING_BATCH_ROWS


def rescore_unscored(directory: Location, scorer: _Scorer, days: Iterable[dt.date | str] | None = None, *,
                     chunk_rows: int = RESCORE_CHUNK_ROWS) -> int:
    """Score the rows with ``model_version`` null and rewrite their shards in place.

    Already scored rows keep their values. Returns the number of rows scored (0 when the
    scorer has no model yet). ``scorer.score`` gets at most ``chunk_rows`` rows per call
    (see :data:`RESCORE_CHUNK_ROWS`); a shard is rewritten once, after all its chunks scored.
    Each shard is read and rewritten under its day's lock, so a
    concurrent rewrite of the same shard (reprocessing) is never overwritten with older rows.
    A day whose files were compacted or merged while it was being rescored is passed over
    again: the compacted file carries the rows still unscored, and a caller that marks the
    day done afterwards must not leave them so.
    """
    if chunk_rows < 1:
        msg = f"The chunk_rows of rescore_unscored must be >= 1. Got {chunk_rows!r} instead."
        raise ShardError(msg)
    total = 0
    wanted = list_days(directory) if days is None else sorted({_day(d) for d in days})
    for day in wanted:
        for _ in range(_RESCORE_PASSES):
            scored, vanished = _rescore_day(directory, day, scorer, chunk_rows)
            total += scored
            if not vanished:
                break
        else:
            logger.warning("day %s kept changing while it was rescored; rows may stay unscored until the next pass",
                           day)
    logger.info("rescored unscored rows=%d", total)
    return total


#: Passes over one day when its files change under the rescoring (a compaction finishes the second).
_RESCORE_PASSES = 5


def _score_in_chunks(table: pa.Table, rows: np.ndarray, scorer: _Scorer, chunk_rows: int
                     ) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Score ``table``'s ``rows`` ``chunk_rows`` at a time.

    Returns which of ``rows`` got a version, and the score columns of those rows (cast to the
    shard's types, in ``rows`` order). Only the score columns of each chunk are kept.
    """
    got: list[np.ndarray] = []
    parts: dict[str, list[pa.Array]] = {name: [] for name in _SCORE_NAMES}
    for lo in range(0, len(rows), chunk_rows):
        chunk = rows[lo:lo + chunk_rows]
        first, span = int(chunk[0]), int(chunk[-1] - chunk[0]) + 1
        part = table.slice(first, span)  # rows ascend: the chunk lies within this slice (zero-copy)
        if span != len(chunk):  # scattered unscored rows: take from the slice, not from the whole file
            part = part.take(chunk - first)
        scored = scorer.score(part)
        ok = pc.is_valid(scored.column("model_version")).to_numpy(zero_copy_only=False)
        got.append(ok)
        keep = pa.array(ok)
        for name in _SCORE_NAMES:
            column = scored.column(name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            parts[name].append(column.cast(SHARD_SCHEMA.field(name).type).filter(keep))
        del scored, part  # the chunk's inputs and extra outputs go now, not with the next chunk
    return np.concatenate(got), {name: pa.concat_arrays(arrays) for name, arrays in parts.items()}


def _rescore_day(directory: Location, day: dt.date, scorer: _Scorer, chunk_rows: int) -> tuple[int, bool]:
    """Rescore one day's live shards; returns (rows scored, whether a listed file had vanished)."""
    store = _store(directory)
    total, vanished = 0, False
    for path in shard_paths(directory, [day]):
        with store.lock(path.parent):
            try:
                table = store.read_table(path)
            except FileNotFoundError:
                vanished = True  # compacted or merged meanwhile: the new file is seen on the next pass
                continue
            unscored = pc.is_null(table.column("model_version")).to_numpy(zero_copy_only=False)
            if not unscored.any():
                continue
            idx = np.flatnonzero(unscored)
            now_scored, new = _score_in_chunks(table, idx, scorer, chunk_rows)
            if not now_scored.any():
                continue  # no version for these rows yet (no model, or their day's version is missing)
            mask = unscored.copy()
            mask[idx[~now_scored]] = False  # rows still without a version stay null
            columns = []
            for name in table.column_names:
                if name in _SCORE_NAMES:
                    col = table.column(name).combine_chunks()
                    columns.append(pc.replace_with_mask(col, pa.array(mask), new[name].cast(col.type)))
                else:
                    columns.append(table.column(name))
            if store.remote and not store.is_file(path):
                vanished = True  # no lock across processes there: compacted meanwhile, do not resurrect
                continue
            store.write_table(path, pa.Table.from_arrays(columns, schema=table.schema))
            total += int(now_scored.sum())
    return total, vanished


def compact_day(directory: Location, day: dt.date | str) -> int:
    """Merge a finished day's shards into one file per partition; returns the files now live.

    Atomic per partition: the compacted file is written (fsync + rename, or one upload) before
    the files it covers are deleted (see the module docstring for what a crash in between
    leaves). Of a query's copies in the partition only the latest is kept: the highest offset (a
    reset or seek back sent the row again), and of a row re-delivered under two files (the same
    offset) the later file's; :func:`read_shards` returns exactly that row, so reads do not change.
    Every pass of a replayed log added a whole copy of it that stayed for good (85 resets: 69 copies,
    5.6 GB for a log of 83 MB, and a day's read needed 16 GB). Run it for days that no longer receive
    events (the scoring app: a day older than the event-time watermark minus the grace, or quiet
    after a replay sent it again); a late event still works, it just adds one more file.
    """
    store = _store(directory)
    folder = _day_dir(store, day)
    with store.lock(folder):
        names = _live(store.names(folder))
        by_part: dict[int, list[str]] = {}
        for name in names:
            by_part.setdefault(int(name[1:name.index("-")]), []).append(name)
        for part, files in sorted(by_part.items()):
            if len(files) < 2:
                continue
            table = pa.concat_tables([store.read_table(folder / n) for n in files])
            # the name covers every offset the files held, dropped copies too: a file of them that a
            # compaction killed before deleting it stays covered (_live), not read as live again
            bounds = pc.min_max(table.column("kafka_offset"))
            lo, hi = int(bounds["min"].as_py()), int(bounds["max"].as_py())
            # each query's latest copy, the one every read returns; in offset order
            table = dedupe_latest(table).sort_by([("kafka_offset", "ascending"), ("instance_id", "ascending"),
                                                  ("query_id", "ascending")])
            store.write_table(folder / compacted_name(part, lo, hi), table)
            for name in files:
                if name != compacted_name(part, lo, hi):
                    store.delete(folder / name)
        _remove_covered(store, folder)
        live = len(_live(store.names(folder)))
    logger.info("shards compacted day=%s files=%d", _day(day), live)
    return live


def _remove_covered(store: _Local | _Remote, folder: PurePath) -> None:
    """Delete the files a compacted file covers (left by a compaction killed mid-way) and stale temps."""
    names = store.names(folder)
    live = set(_live(names))
    for name in names:
        if (_SHARD_RE.match(name) and name not in live) or name.endswith(".tmp"):
            store.delete(folder / name)


def maintain(directory: Location, watermark: dt.date, *, retention_days: int | None = None,
             settle_days: int = 1, max_files_per_partition: int = 2,
             also: Iterable[dt.date] = ()) -> dict[str, list[dt.date]]:
    """Compact the days that ended ``settle_days`` before ``watermark``, and the days ``also``; apply the
    retention.

    ``watermark`` is the scoring app's event-time day (its newest event minus the grace); ``also``
    are days its writers left quiet after a replay sent them again, which the watermark, standing at
    the log's end, never settles again. A settled day is compacted when some partition has more than
    ``max_files_per_partition`` live files (so a compacted day is only touched again once late
    events piled up); a day in ``also`` when some partition has more than one: a pass the sink wrote
    in one file beside the compacted one is a second copy of the day. Returns what was done.
    """
    done: dict[str, list[dt.date]] = {"compacted": [], "deleted": []}
    if retention_days is not None:
        done["deleted"] = delete_older_than(directory, retention_days, today=watermark)
    store = _store(directory)
    cutoff = watermark - dt.timedelta(days=settle_days)
    quiet = set(also)
    for day in list_days(directory):
        if day >= cutoff and day not in quiet:
            continue
        names = _live(store.names(_day_dir(store, day)))
        per_part: dict[str, int] = {}
        for name in names:
            per_part[name[1:name.index("-")]] = per_part.get(name[1:name.index("-")], 0) + 1
        most = 1 if day in quiet else max_files_per_partition
        if any(n > most for n in per_part.values()):
            compact_day(directory, day)
            done["compacted"].append(day)
    return done


def delete_older_than(directory: Location, days: int, *, today: dt.date) -> list[dt.date]:
    """Retention: delete the day folders more than ``days`` days before ``today``; returns them."""
    if days < 1:
        msg = f"Shard retention must keep at least 1 day. Got {days!r} instead."
        raise ShardError(msg)
    store = _store(directory)
    cutoff = today - dt.timedelta(days=days)
    removed = []
    for day in list_days(directory):
        if day < cutoff:
            store.remove_folder(_day_dir(store, day))
            removed.append(day)
            logger.info("shards deleted by retention day=%s", day)
    return removed


# --- progress of the writers (N instances, one home) -------------------------------------------------
PROGRESS_DIR = "_progress"


def _read_json(store: _Local | _Remote, path: PurePath) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(path))
    except (FileNotFoundError, ValueError):
        return None  # gone, or replaced between listing and reading


def record_progress(directory: Location, partition: int, *, first_us: int | None = None,
                    max_us: int | None = None, end_us: int | None = None) -> None:
    """Note that ``partition``'s events up to ``max_us`` (from ``first_us``) are durably in the shards,
    and (``end_us``) that it delivered an end-of-log marker of that time after them.

    Call it after the shards are written. The range only widens (a partition that moves to
    another instance keeps its progress; a replay reset does not move it back). A marker of a
    partition that stored no event is not noted: it holds nothing back anyway.
    """
    store = _store(directory)
    path = store.path(PROGRESS_DIR, f"p{partition:03d}.json")
    old = _read_json(store, path) or {}
    if max_us is None and "max_us" not in old:
        return
    first = min(int(v) for v in (first_us, old.get("first_us"), max_us) if v is not None)
    newest = max(int(v) for v in (max_us, old.get("max_us")) if v is not None)
    ends = [int(v) for v in (end_us, old.get("end_us")) if v is not None]
    end = max(ends) if ends else None
    if old.get("first_us") == first and old.get("max_us") == newest and old.get("end_us") == end:
        return
    data: dict[str, Any] = {"partition": partition, "first_us": first, "max_us": newest, "at": time.time()}
    if end is not None:
        data["end_us"] = end
    store.write_bytes(path, json.dumps(data).encode())


def offset_base(directory: Location, partition: int, topic_id: str | None) -> int:
    """What the scoring app adds to ``partition``'s Kafka offsets before they name shards and fill
    ``kafka_offset``: 0 for the first topic of its name, and past every offset stored for the partition
    for a topic created again under that name (``topic_id`` is Kafka's id of the topic now).

    A topic deleted and created again starts its offsets at 0 once more: its first shards took the
    names of stored ones and replaced their rows (169 queries of a day lost, found by a tester), and
    the latest copy of a query was no longer the one with the highest offset. The base is kept in
    ``_progress/o{NNN}.json``, written before the first shard of the new topic. A home whose shards
    were written before bases were kept (no file) counts as written by the topic now; an unknown id
    (an old broker) keeps the base as recorded.
    """
    store = _store(directory)
    path = store.path(PROGRESS_DIR, f"o{partition:03d}.json")
    recorded = _read_json(store, path)
    if recorded is not None and (topic_id is None or recorded.get("topic_id") == topic_id):
        return int(recorded.get("offset_base", 0))
    if topic_id is None:
        return 0
    base = 0 if recorded is None else _next_offset(directory, partition)
    if recorded is not None:
        logger.warning("topic id of partition %d is %s, the shards' was %s (the topic was created again): its "
                       "offsets are stored from %d on", partition, topic_id, recorded.get("topic_id"), base)
    store.write_bytes(path, json.dumps({"partition": partition, "topic_id": topic_id, "offset_base": base,
                                        "at": time.time()}).encode())
    return base


def _next_offset(directory: Location, partition: int) -> int:
    """One past the highest ``kafka_offset`` stored for ``partition`` in any day."""
    store = _store(directory)
    top = -1
    for path in shard_paths(directory):
        compacted, plain = _COMPACT_RE.match(path.name), _PLAIN_RE.match(path.name)
        if compacted and int(compacted.group(1)) == partition:
            top = max(top, int(compacted.group(3)))
        elif plain and int(plain.group(1)) == partition:
            offsets = store.read_table(path, columns=["kafka_offset"]).column("kafka_offset")
            if len(offsets):
                top = max(top, int(pc.max(offsets).as_py()))
    return top + 1


#: The day judged only because the log ended there (:func:`set_provisional_day`); not a progress
#: or heartbeat file (those names start with "p" and "i").
_PROVISIONAL_NAME = "judged_at_end_of_log.json"


def provisional_day(directory: Location) -> tuple[dt.date, int] | None:
    """``(day, end_us)``: the day the scoring app judged only because a log ended in it at ``end_us``, or None.

    Such a day may be judged on part of its events (a log cut in the middle of a day): when more of it
    arrives (a later day settles it, or a later log ends further on), it is judged again, whole.
    """
    store = _store(directory)
    data = _read_json(store, store.path(PROGRESS_DIR, _PROVISIONAL_NAME))
    if not data or data.get("day") is None:
        return None
    return dt.date.fromisoformat(data["day"]), int(data["end_us"])


def set_provisional_day(directory: Location, day: dt.date | None, end_us: int | None = None) -> None:
    """Note (or, with ``day=None``, clear) the day judged only because a log ended in it."""
    store = _store(directory)
    data = {"day": None if day is None else day.isoformat(), "end_us": end_us, "at": time.time()}
    store.write_bytes(store.path(PROGRESS_DIR, _PROVISIONAL_NAME), json.dumps(data).encode())


def _heartbeat_name(slot: int | str) -> str:
    return f"i{slot:03d}.json" if isinstance(slot, int) else f"i-{slot}.json"


def write_heartbeat(directory: Location, slot: int | str, *, assigned: Iterable[int], idle: Iterable[int],
                    now: float | None = None, written: Mapping[dt.date, float] | None = None) -> None:
    """Instance ``slot`` is alive, holds ``assigned`` partitions, and ``idle`` of them delivered nothing lately.

    ``slot`` is the instance slot of one home, or a string unique across machines (``host-slot``)
    when several homes share the shards. ``written``: event days it stored rows of lately, each with
    the wall time after its last such write (the trainer judges a day again that was written after
    it judged it: :attr:`ShardClock.written`).
    """
    store = _store(directory)
    data = {"slot": slot, "pid": os.getpid(), "at": time.time() if now is None else now,
            "assigned": sorted(int(p) for p in assigned), "idle": sorted(int(p) for p in idle),
            "written": {day.isoformat(): float(at) for day, at in sorted((written or {}).items())}}
    store.write_bytes(store.path(PROGRESS_DIR, _heartbeat_name(slot)), json.dumps(data).encode())


def remove_heartbeat(directory: Location, slot: int | str) -> None:
    """Instance ``slot`` stopped: its partitions hold the watermark until another instance takes them."""
    store = _store(directory)
    store.delete(store.path(PROGRESS_DIR, _heartbeat_name(slot)))


class ShardClock(NamedTuple):
    """Event-time progress over every partition of the shards (:func:`cluster_clock`)."""

    first_us: int | None
    watermark_us: int | None
    #: The newest stored event time once every partition that stored events has delivered an
    #: end-of-log marker at or after its newest one (the log's last day is complete), else None.
    ended_us: int | None = None
    #: Event day -> the latest wall time any instance reported storing rows of it (its heartbeat's
    #: ``written``, dead instances' included: their writes happened).
    written: Mapping[dt.date, float] = {}


def log_ended_us(newest: Mapping[int, int], ends: Mapping[int, int]) -> int | None:
    """The newest event time of ``newest`` (per partition) when every one of those partitions has an
    end-of-log marker at or after it in ``ends`` (the log's last day is complete), else None."""
    if not newest or any(ends.get(p, -1) < us for p, us in newest.items()):
        return None
    return max(newest.values())


def cluster_clock(directory: Location, *, alive_s: float = 15.0, now: float | None = None) -> ShardClock:
    """:func:`cluster_watermark`, and whether the log ended (:attr:`ShardClock.ended_us`), from one read."""
    written: dict[dt.date, float] = {}
    first, watermark, progress = _cluster_watermark(directory, alive_s=alive_s, now=now, written=written)
    ended = log_ended_us({p: int(d["max_us"]) for p, d in progress.items()},
                         {p: int(d["end_us"]) for p, d in progress.items() if "end_us" in d})
    return ShardClock(first, watermark, ended, written)


def cluster_watermark(directory: Location, *, alive_s: float = 15.0, now: float | None = None
                      ) -> tuple[int | None, int | None]:
    """``(first_us, watermark_us)`` over every partition any instance has stored.

    The watermark is the newest event time that every partition still delivering has durably
    stored: the minimum of the partitions' progress, where a partition counts as caught up (and
    no longer holds it back) only when a live instance (heartbeat younger than ``alive_s``)
    holds it and reports it idle. A partition whose instance died, or that is between owners in
    a rebalance, holds the watermark at its progress; a partition assigned but not delivered yet
    (and not idle) holds it at nothing (None). With every partition idle it is the newest progress.
    """
    first, watermark, _ = _cluster_watermark(directory, alive_s=alive_s, now=now)
    return first, watermark


def _cluster_watermark(directory: Location, *, alive_s: float, now: float | None,
                       written: dict[dt.date, float] | None = None,
                       ) -> tuple[int | None, int | None, dict[int, dict[str, Any]]]:
    store = _store(directory)
    folder = store.path(PROGRESS_DIR)
    names = [n for n in store.names(folder) if n.endswith(".json")]
    if not names:
        return None, None, {}
    now = time.time() if now is None else now
    progress: dict[int, dict[str, Any]] = {}
    assigned: set[int] = set()
    idle: set[int] = set()
    for name in names:
        data = _read_json(store, folder / name)
        if data is None:
            continue
        if name.startswith("p"):
            progress[int(data["partition"])] = data
            continue
        if name.startswith("i") and written is not None:
            for day, at in (data.get("written") or {}).items():
                with contextlib.suppress(TypeError, ValueError):  # a damaged entry only costs a judging again
                    key = dt.date.fromisoformat(day)
                    written[key] = max(float(at), written.get(key, 0.0))
        if name.startswith("i") and now - float(data.get("at", 0.0)) < alive_s:
            assigned |= set(data.get("assigned", ()))
            idle |= set(data.get("assigned", ())) & set(data.get("idle", ()))
    if not progress:
        return None, None, {}
    first = min(int(d["first_us"]) for d in progress.values())
    holding = []
    for partition in sorted(set(progress) | assigned):
        if partition in idle:
            continue
        if partition not in progress:
            return first, None, progress  # assigned, not idle, nothing stored yet: wait for its first batch
        holding.append(int(progress[partition]["max_us"]))
    if holding:
        return first, min(holding), progress
    return first, max(int(d["max_us"]) for d in progress.values()), progress
