"""Training: window of events -> features -> regressors -> ONNX -> parity -> calibration -> registry.

Also the training subprocess: ``python -m workbench.ml._train --day YYYY-MM-DD [--home H]`` trains
one day in its own process (see :func:`main`). The public names are re-exported by ``workbench.ml``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import importlib.metadata
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from workbench import defaults
from workbench._lifeline import bind_to_supervisor
from workbench.analysis.slower_groups import usual_group_hours
from workbench.config import Settings, get_settings
from workbench.data.exceptions import DataValidationError
from workbench.data.schema import (
    COLUMNS,
    FIELDS,
    LABEL_COLUMNS,
    READ_OPTIONS,
    VERIFY_PAGES,
    _check_schema,
    kind_names,
    open_parquet,
    require_log,
)
from workbench.data.validation import refuse_bad_rows
from workbench.exceptions import WorkbenchError
from workbench.ml._forkserver import serve
from workbench.ml._standby import UNTRAINABLE_RC
from workbench.ml.detector import ResidualDetector
from workbench.ml.exceptions import UntrainableWindow
from workbench.ml.features import (
    INPUT_COLUMNS,
    OBSERVED_COLUMNS,
    RUN_FLAG_COLUMNS,
    FeatureBuilder,
    _log_signal,
    observed_signals,
)
from workbench.ml.models import DurationModel, OnnxPair, export_onnx, parity_max_abs_diff
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import USUAL_HOURS_FILE

__all__ = ["TrainResult", "load_log_window", "main", "split_window", "table_sha256", "train_day",
           "train_table", "window_days_of"]

logger = logging.getLogger(__name__)

MIN_ROWS = 500
PARITY_TOLERANCE = 1e-3
PARITY_ROWS = 5000


@dataclass(frozen=True)
class TrainResult:
    """What one training produced."""

    version: str
    seconds: float
    rows: int
    meta: dict[str, Any]


def window_days_of(day: dt.date, window_days: int) -> list[dt.date]:
    """The ``window_days`` days ending with ``day`` (inclusive)."""
    if window_days < 1:
        msg = f"window_days must be >= 1. Got {window_days} instead."
        raise ValueError(msg)
    return [day - dt.timedelta(days=k) for k in range(window_days - 1, -1, -1)]


def load_log_window(path: Path, day: dt.date, window_days: int) -> pa.Table:
    """Rows of a Parquet query log (a file or a folder of them) whose UTC arrival day is in the
    window ending at ``day``, typed as the Redset schema (and the label columns any file has: NULL in the others).

    The files are those the replay reads (:func:`workbench.replay.log_parts`), each checked for the
    Redset columns and types ``workbench validate`` accepts; naive times are UTC.

    Raises
    ------
    DataValidationError
        Naming the file (and column): it does not exist, does not read as Parquet, lacks a Redset
        column or holds one of a type that does not convert; or (naming the row too) rows of the
        window, or rows without an arrival time, break the per-row rules the replay applies.
    """
    from workbench.replay._source import log_parts

    days = window_days_of(day, window_days)
    start = dt.datetime.combine(days[0], dt.time(), dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    require_log(path)
    parts = log_parts(path)
    schemas = [_read_schema(part) for part in parts]
    for schema, part in zip(schemas, parts, strict=True):
        # labels are checked by their readers (evaluate.anomaly_labels), which take other tools' forms too
        _check_schema(pa.schema([f for f in schema if f.name not in LABEL_COLUMNS]), part)
    # a label column of some files only is kept: the other files' rows read as NULL (not labelled)
    labels = [name for name in LABEL_COLUMNS if any(name in schema.names for schema in schemas)]
    names = [*COLUMNS, *labels]
    target = pa.schema([FIELDS[name] for name in COLUMNS])
    tables = []
    for part, schema in zip(parts, schemas, strict=True):
        try:
            # string_view read as string: pyarrow's filter has no kernel for string_view. Only the columns
            # read: another tool's columns may repeat a name, which a dataset's schema cannot hold
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f
                                for f in schema if f.name in names], metadata=schema.metadata)
            dataset = ds.dataset(str(part), format=_PARQUET, schema=schema)
            ts_type = dataset.schema.field("arrival_timestamp").type
            # compared in the column's own type: a naive column holds UTC wall times
            bounds = [pa.scalar(t if ts_type.tz else t.replace(tzinfo=None), pa.timestamp("us", tz=ts_type.tz))
                      for t in (start, end)]
            ts = ds.field("arrival_timestamp")
            table = dataset.to_table(columns=[name for name in names if name in schema.names],
                                     filter=(ts >= bounds[0]) & (ts < bounds[1]))
            # the replay's per-row rules: a negative duration or a NULL id must not be trained on
            refuse_bad_rows(table.select(list(COLUMNS)), part, f"the days {days[0]} .. {day}",
                            null_arrivals=dataset.count_rows(filter=ts.is_null()))
            tables.append(_conform_table(table, target, labels, part))
        except (pa.ArrowException, OSError) as exc:
            msg = (f"Query log {str(part)!r} cannot be read as a Parquet log ({exc}). "
                   f"`workbench validate {part}` names what is wrong; `workbench prepare` converts other layouts.")
            raise DataValidationError(msg, path=str(part)) from exc
    if len(tables) > 1 and len({table.schema for table in tables}) > 1:  # labels typed differently per file
        # as text (anomaly_labels reads "true" and "1" alike), nullable: a bool label is "not null" in the
        # generator's schema, a text one is not, and concat_tables refuses the two
        tables = [table.cast(pa.schema([f if f.name in COLUMNS else pa.field(f.name, pa.string())
                                        for f in table.schema])) for table in tables]
    return one_row_per_query(tables[0] if len(tables) == 1 else pa.concat_tables(tables), path)


def one_row_per_query(table: pa.Table, path: Path) -> pa.Table:
    """``table`` with each ``(instance_id, query_id)`` once (its first row, in log order), with a warning
    naming how many repeats were dropped and the first: the stream's shards keep one row per query, so
    a log that repeats queries (which ``validate`` refuses) is trained and evaluated as the stream sees it,
    not with the repeats weighted twice and counted twice in the metrics."""
    keys = ["instance_id", "query_id"]
    if table.num_rows < 2 or table.select(keys).group_by(keys, use_threads=False).aggregate([]).num_rows \
            == table.num_rows:
        return table
    instance = table.column("instance_id").to_numpy(zero_copy_only=False)
    query = table.column("query_id").to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(len(query)), query, instance))  # by key, then log order
    repeat = np.zeros(len(query), dtype=bool)
    repeat[order[1:]] = (instance[order[1:]] == instance[order[:-1]]) & (query[order[1:]] == query[order[:-1]])
    first = int(np.flatnonzero(repeat)[0])
    logger.warning("%s repeats %d queries (same instance_id and query_id) in the rows read, first instance_id %d "
                   "query_id %d: each is kept once, its first row, as the stream's shards keep it "
                   "(`workbench validate` names every repeat)", path, int(repeat.sum()), int(instance[first]),
                   int(query[first]))
    return table.filter(pa.array(~repeat))


#: The Parquet format as every reader of a log reads it (:data:`workbench.data.schema.READ_OPTIONS`).
_PARQUET = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(**READ_OPTIONS),
                                default_fragment_scan_options=ds.ParquetFragmentScanOptions(**VERIFY_PAGES))


def _read_schema(part: Path) -> pa.Schema:
    try:
        return open_parquet(part).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        msg = (f"Query log {str(part)!r} is not a readable Parquet file ({exc}). "
               "Pass a Parquet file with the Redset columns, e.g. one written by `workbench generate`.")
        raise DataValidationError(msg, path=str(part)) from exc


def _conform_table(table: pa.Table, target: pa.Schema, labels: list[str], part: Path) -> pa.Table:
    """``table``'s columns cast to ``target``'s types (dictionaries decoded): what ``read_batches`` does;
    ``label_kind`` as text (:func:`~workbench.data.schema.kind_names`: a code 3 or 3.0 is kind "3"),
    ``label_anomaly`` as it is (``evaluate.anomaly_labels`` reads its forms)."""
    columns, fields = [], list(target)
    for field in target:
        column = table.column(field.name)
        if pa.types.is_dictionary(column.type):
            column = pa.chunked_array([chunk.dictionary_decode() for chunk in column.chunks],
                                      column.type.value_type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    for name in labels:
        if name not in table.column_names:  # this file is not labelled
            columns.append(pa.nulls(table.num_rows, FIELDS[name].type))
            fields.append(pa.field(name, FIELDS[name].type))
            continue
        column = table.column(name)
        if name == "label_kind":
            column = kind_names(column, part)
        elif pa.types.is_dictionary(column.type):
            column = pa.chunked_array([chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type)
        columns.append(column)
        # the decoded type: the file's field would turn a decoded dictionary back into one
        fields.append(FIELDS[name] if column.type == FIELDS[name].type else pa.field(name, column.type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def table_sha256(table: pa.Table) -> str:
    """Content hash of a table: column names, types, nulls and values; independent of chunking.

    Hashes each column's values chunk by chunk (no copy, no serialisation): each column feeds
    three running hashes (nulls, value lengths, value bytes) whose digests are combined, so
    the same values in different chunks give the same hash. ~0.2 s for 450k Redset rows.
    """
    digest = hashlib.sha256(str(table.schema.remove_metadata()).encode())
    for column in table.columns:
        nulls, lengths, data = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        for arr in column.chunks:
            nulls.update(np.asarray(pc.is_null(arr)).tobytes())
            if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
                offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
                lengths.update(np.diff(offsets).tobytes())
                buffer = arr.buffers()[2]
                if buffer is not None and len(offsets):
                    data.update(memoryview(buffer)[int(offsets[0]):int(offsets[-1])])
            elif pa.types.is_timestamp(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
                values = arr.cast(pa.int64()) if pa.types.is_timestamp(arr.type) else arr
                data.update(values.fill_null(0).to_numpy(zero_copy_only=False).tobytes())
            elif pa.types.is_boolean(arr.type):
                data.update(arr.fill_null(False).to_numpy(zero_copy_only=False).tobytes())
            else:  # other types (not in the Redset schema): their text form, one value per line
                data.update("".join(f"{v}\n" for v in arr.to_pylist()).encode())
        for part in (nulls, lengths, data):
            digest.update(part.digest())
    return digest.hexdigest()


class _PhaseClock:
    """Wall and process CPU seconds per phase of a training (CPU: every thread of the process)."""

    def __init__(self) -> None:
        self._start = self._mark = (time.perf_counter(), time.process_time())
        self._wall: dict[str, float] = {}
        self._cpu: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self._wall[phase] = round(now[0] - self._mark[0], 3)
        self._cpu[phase] = round(now[1] - self._mark[1], 3)
        self._mark = now

    def total(self) -> float:
        return time.perf_counter() - self._start[0]

    def wall(self) -> dict[str, float]:
        return dict(self._wall)

    def cpu(self) -> dict[str, float]:
        return {**self._cpu, "total": round(time.process_time() - self._start[1], 3)}


_LIBRARY_DISTRIBUTIONS = ("scikit-learn", "skl2onnx", "onnxruntime", "onnx", "numpy", "pyarrow")


def _library_versions() -> dict[str, str]:
    """Installed versions of the libraries a model depends on (for ``model.json`` and the recipe hash).

    Read from the package metadata rather than ``module.__version__``: the same strings, without
    importing onnx/skl2onnx/sklearn (~2-3 s), which :func:`_preload` does in the background.
    """
    return {name: importlib.metadata.version(name) for name in _LIBRARY_DISTRIBUTIONS}


def _import_quietly(*modules: str) -> None:
    """Import ``modules`` (sklearn's HGB: ~1-1.5 s) ahead of their first use, in a background thread.

    So the imports run while the main thread works in C code that releases the GIL (Arrow,
    numpy sorts) instead of being paid on first use. Python's per-module import locks make a
    concurrent import of the same module wait for this one, not repeat it.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the real import (in fit/export) reports the error
            logger.debug("background import of %s failed", name, exc_info=True)
            return


def _usual_group_hours(train: pa.Table, y: np.ndarray, mean_log: np.ndarray, builder: FeatureBuilder) -> pa.Table:
    """:func:`~workbench.analysis.slower_groups.usual_group_hours` of the training rows: the runtime past
    the model's own (in-sample) expectations, the wait past the usual wait at that hour
    (:meth:`FeatureBuilder.usual_wait`), over the rows the slower groups judge (the statement's own
    history, not a result-cache hit; training rows are not aborted and have a runtime)."""
    judged = (builder.reference_source(train) == 0) & (y > 0)
    if "was_cached" in train.column_names:
        judged &= ~pc.fill_null(train.column("was_cached"), False).to_numpy(zero_copy_only=False).astype(bool)
    residuals = {"runtime": y - mean_log, "queue": _log_signal(train, "queue") - builder.usual_wait(train)}
    return usual_group_hours(train, residuals, judged)


def split_window(table: pa.Table, *, max_rows: int = defaults.TRAIN_MAX_ROWS, seed: int = 0,
                 holdout_fraction: float = 0.15) -> tuple[pa.Table, pa.Table, int]:
    """``(train, holdout, usable rows)`` of a window: non-aborted rows with a runtime, capped.

    The holdout is made of whole hours (every ``1 / holdout_fraction``-th hour of the window),
    scored with the history of the other hours only: like the next day's traffic, it holds
    fingerprints the model never saw, and it spans the whole daily cycle (a tail-of-window holdout
    would calibrate on the quiet evening hours only).
    """
    table = table.select([c for c in COLUMNS if c in table.column_names])
    train, hold, _, raw_rows = _split_rows(table, max_rows=max_rows, seed=seed, holdout_fraction=holdout_fraction)
    return table.take(train), table.take(hold), raw_rows


def _split_rows(table: pa.Table, *, max_rows: int, seed: int, holdout_fraction: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Row numbers ``(train, holdout, history, usable rows)`` of :func:`split_window`'s split.

    ``history`` is every usable row outside the holdout's hours, sampled or not (``train`` is a
    subset of it): the fingerprint statistics are counted over all of a window's runs, while the
    ``max_rows`` cap only bounds the regressors' training rows. Counted over the sample, a
    fingerprint that ran 5 times in a week of 1.5M rows keeps about one run and falls back to the
    instance's prior.
    """
    keep = pc.and_(pc.is_valid(table.column("execution_duration_ms")),
                   pc.invert(pc.fill_null(table.column("was_aborted"), False)))
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    raw_rows = len(rows)
    if raw_rows < MIN_ROWS:
        return rows, rows[:0], rows, raw_rows
    rng = np.random.default_rng(seed)
    # Row numbers of the (capped) sample; the train and holdout tables are taken from ``table`` in
    # one step each (filtering, sampling, then splitting copied every column three times).
    sample = np.sort(rng.choice(raw_rows, max_rows, replace=False)) if raw_rows > max_rows else np.arange(raw_rows)
    ts_all = table.column("arrival_timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)[rows]
    ts = ts_all[sample]
    # Blocked holdout: whole hours, every k-th hour of the window (k ~ 1 / holdout_fraction), so
    # it spans every hour of the day while its fingerprints that first appear in those hours are
    # as unseen as tomorrow's.
    every = max(round(1 / holdout_fraction), 2)
    hold_all = (ts_all // 3_600_000_000) % every == every // 2
    hold = hold_all[sample]
    if hold.sum() < 200 or (~hold).sum() < 200:  # a window of a few hours: fall back to the tail
        order = np.argsort(ts, kind="stable")
        hold = np.zeros(len(ts), dtype=bool)
        hold[order[len(ts) - max(int(len(ts) * holdout_fraction), 200):]] = True
        hold_all = ts_all >= ts[hold].min()
        hold_all[sample[~hold]] = False  # the sample's training rows, whatever their tie with the tail
    return rows[sample[~hold]], rows[sample[hold]], rows[~hold_all], raw_rows


def train_table(models_dir: Path, table: pa.Table, day: dt.date, *, window_days: int = defaults.TRAIN_WINDOW_DAYS,
                max_rows: int = defaults.TRAIN_MAX_ROWS, seed: int = 0, holdout_fraction: float = 0.15,
                alert_rate: float = 0.0005, parity_tolerance: float = PARITY_TOLERANCE,
                model_params: dict[str, Any] | None = None, parent: str | None = None,
                set_current: bool = True, inputs_sha256: str | None = None) -> TrainResult:
    """Train, export, check and register a version from the events of one window.

    Parameters
    ----------
    models_dir : Path
        Registry root (``settings.models_dir``).
    table : Table
        Events of the window (Redset columns; others are ignored). Aborted rows and rows
        without execution time are dropped.
    day : date
        Last day of the window (names the version).
    max_rows : int, default=defaults.TRAIN_MAX_ROWS
        Seeded uniform sample cap.
    seed : int, default=0
        Seed of the sample and of the models, in ``[0, 2**32 - 1]`` (``defaults.TRAIN_MAX_SEED``): same
        seed, same version.
    holdout_fraction : float, default=0.15
        Share of rows held out for parity, regression metrics and detector calibration.
    alert_rate : float, default=0.0005
        The detector's target false-alert rate (see :class:`ResidualDetector`).
    inputs_sha256 : str, optional
        Content hash of the window's events (default: computed from ``table``); recorded in
        ``model.json`` with ``recipe_sha256`` (inputs + parameters), which makes a retried
        training of the same window return the registered version instead of a second one.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= defaults.TRAIN_MAX_SEED:
        # the sample's and the models' seed: NumPy and scikit-learn refused it only after the window was read
        msg = (f"The 'seed' parameter of train_table must be an integer in [0, {defaults.TRAIN_MAX_SEED:,}]. "
               f"Got {seed!r}.")
        raise ValueError(msg)
    clock = _PhaseClock()
    registry = ModelRegistry(models_dir)
    registry.check_writable()  # before the fit, not after it
    parent = parent if parent is not None else registry.current()
    table = table.select([c for c in COLUMNS if c in table.column_names])
    # Off the critical path, on the core the split and the features leave mostly idle: the HGB
    # import (needed by the fit) and the input hash (needed by the registration).
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-background")
    try:
        background.submit(_import_quietly, "sklearn.ensemble")
        hashed = background.submit(table_sha256, table) if inputs_sha256 is None else None
        return _train_table(clock, registry, parent, table, hashed, day, window_days=window_days,
                            max_rows=max_rows, seed=seed, holdout_fraction=holdout_fraction,
                            alert_rate=alert_rate, parity_tolerance=parity_tolerance,
                            model_params=model_params, set_current=set_current, inputs_sha256=inputs_sha256)
    finally:
        background.shutdown(wait=False, cancel_futures=True)


def _train_table(clock: _PhaseClock, registry: ModelRegistry, parent: str | None, table: pa.Table,
                 hashed: Future[str] | None, day: dt.date, *, window_days: int, max_rows: int, seed: int,
                 holdout_fraction: float, alert_rate: float, parity_tolerance: float,
                 model_params: dict[str, Any] | None, set_current: bool, inputs_sha256: str | None) -> TrainResult:
    """:func:`train_table` once its background work is started (``hashed``: the input hash to come)."""
    model = DurationModel(random_state=seed, **(model_params or {}))
    train_rows, hold_rows, history_rows, raw_rows = _split_rows(table, max_rows=max_rows, seed=seed,
                                                                holdout_fraction=holdout_fraction)
    if raw_rows < MIN_ROWS:
        msg = (f"Training for {day} needs at least {MIN_ROWS} usable rows (not aborted, with an "
               f"execution_duration_ms) in the {window_days}-day window of {table.num_rows} rows; got {raw_rows}. "
               "Wait for more events or widen window_days.")
        raise UntrainableWindow(msg)
    train, hold = table.take(train_rows), table.take(hold_rows)
    n = train.num_rows + hold.num_rows
    n_hold = hold.num_rows
    train_idx = range(train.num_rows)
    clock.lap("prepare")

    builder = FeatureBuilder(seed=seed)
    # History over every run outside the holdout hours (only the columns the builder reads); the
    # regressors train on the sample's rows, the only ones transformed.
    flags = [c for c in RUN_FLAG_COLUMNS if c in table.column_names]  # a statement's runs that did their work
    history = table.select([*INPUT_COLUMNS, *OBSERVED_COLUMNS, *flags]).take(history_rows)
    X = builder.fit_transform(history, np.searchsorted(history_rows, train_rows))
    y = _log_signal(train, "exec")
    clock.lap("features")
    # The blocked holdout is the fits' early-stopping set (see DurationModel.fit), so its
    # features come first.
    X_hold, refs, source = builder.transform_with_evidence(hold)
    observed = observed_signals(hold)
    clock.lap("holdout_features")
    # Each model is exported (skl2onnx imported, ~1 s, by the first) in its fit's thread as soon as
    # it is fitted, while the other fit still runs on the other core.
    onnx: dict[str, bytes] = {}
    export_lock = threading.Lock()  # one conversion at a time: skl2onnx is not documented thread-safe

    def export(name: str, estimator: Any) -> None:
        with export_lock:
            onnx[name] = export_onnx(estimator, X.shape[1])

    model.fit(X, y, X_val=X_hold, y_val=observed["exec"], on_fitted=export)
    clock.lap("fit")

    inputs_sha256 = inputs_sha256 or (hashed.result() if hashed is not None else table_sha256(table))
    recipe_sha256 = hashlib.sha256(json.dumps(
        {"inputs": inputs_sha256, "day": day.isoformat(), "window_days": window_days, "max_rows": max_rows,
         "seed": seed, "holdout_fraction": holdout_fraction, "alert_rate": alert_rate,
         "model_params": model.get_params(), "libraries": _library_versions()},
        sort_keys=True, default=str).encode()).hexdigest()
    with registry.staging() as staged:
        (staged / "mean.onnx").write_bytes(onnx["mean"])
        (staged / "quantile.onnx").write_bytes(onnx["quantile"])
        feature_state = builder.save(staged)
        clock.lap("export")
        pair = OnnxPair(staged / "mean.onnx", staged / "quantile.onnx")
        pq.write_table(_usual_group_hours(train, y, pair.predict_mean_log(X), builder), staged / USUAL_HOURS_FILE)
        clock.lap("usual_hours")
        mean_log, q_log = pair.predict_log(X_hold)
        # Parity on the first holdout rows, against the ONNX predictions just made for them.
        parity = parity_max_abs_diff(model, pair, X_hold[:PARITY_ROWS], tolerance=parity_tolerance,
                                     onnx_log=(mean_log[:PARITY_ROWS], q_log[:PARITY_ROWS]))
        clock.lap("parity")
        detector = ResidualDetector(alert_rate=alert_rate, quantile=model.quantile)
        z = detector.residuals(observed, mean_log, q_log, refs)
        excess = detector.excess(observed, detector.expected(mean_log, refs))
        # The holdout's instances are all known: read as a never-seen instance, its rows calibrate
        # the global prior's group, which they never reach otherwise.
        X_unseen, refs_unseen, source_unseen = builder.transform_with_evidence(builder.as_never_seen_instance(hold))
        mean_unseen, q_unseen = pair.predict_log(X_unseen)
        unseen = (detector.residuals(observed, mean_unseen, q_unseen, refs_unseen),
                  detector.excess(observed, detector.expected(mean_unseen, refs_unseen)), source_unseen)
        detector.fit(z, excess, source, group_only=unseen)
        _, alert, _ = detector.decide(z, excess, source)
        y_hold = observed["exec"]
        holdout = {
            "rows": len(y_hold),
            "MAE(log)": float(np.mean(np.abs(y_hold - mean_log))),
            "q90 coverage": float(np.mean(y_hold <= q_log)),
            "alert rate": float(np.mean(alert)),
        }
        clock.lap("calibrate")
        seconds = clock.total()
        meta = {
            "parent": parent,
            "inputs_sha256": inputs_sha256,
            "recipe_sha256": recipe_sha256,
            "window_days": [d.isoformat() for d in window_days_of(day, window_days)],
            "rows": {"window": int(raw_rows), "trained": len(train_idx), "holdout": int(n_hold),
                     "history": len(history_rows)},
            "seed": seed,
            "features": feature_state,
            "feature_list": list(builder.feature_names_),
            "hyper_parameters": model.get_params(),
            "n_iter": model.n_iter_,
            "onnx": {"mean": "mean.onnx", "quantile": "quantile.onnx", "target_opset": 17,
                     "input": "X", "shape": [None, int(X.shape[1])]},
            "parity_max_abs_diff": parity,
            "parity_tolerance": parity_tolerance,
            "detector": detector.to_dict(),
            "holdout_metrics": holdout,
            "library_versions": _library_versions(),
            "training_seconds": round(seconds, 3),
            "timings": {**clock.wall(), "fit_mean": round(model.fit_seconds_["mean"], 3),
                        "fit_quantile": round(model.fit_seconds_["quantile"], 3), "cpu": clock.cpu()},
        }
        version = registry.publish(staged, day, meta)
    meta = registry.info(version)  # with version id, file hashes and creation time
    if set_current:
        registry.advance_current(version)  # only forward in window order; never moves a person's pin
    logger.info("training done version=%s day=%s rows=%d seconds=%.1f parity=%.2g holdout=%s",
                version, day, n, seconds, parity, holdout)
    return TrainResult(version=version, seconds=seconds, rows=n, meta=meta)


def train_day(settings: Settings, day: dt.date, *, window_days: int = defaults.TRAIN_WINDOW_DAYS,
              max_rows: int = defaults.TRAIN_MAX_ROWS,
              seed: int = 0, data: Path | None = None, **kwargs: Any) -> TrainResult:
    """Train on the shards (or the Parquet log ``data``) of ``[day - window_days + 1, day]``.

    Registers the version and makes it current; on any failure the previous version stays
    current. Extra keyword arguments go to :func:`train_table`.
    """
    from workbench.store.shards import read_window

    ModelRegistry(settings.models_dir).check_writable()  # before the window is read
    if data is not None:
        table = load_log_window(Path(data), day, window_days)
        source = str(data)
    else:  # exactly the window's events, once each, in a canonical order: a version = f(window)
        window = window_days_of(day, window_days)
        table = read_window(settings.shards_dir, window[0], window[-1], columns=list(COLUMNS))
        source = str(settings.shards_dir)
    logger.info("training window loaded day=%s window_days=%d rows=%d source=%s",
                day, window_days, table.num_rows, source)
    if table.num_rows == 0:
        msg = (f"No events for the training window ending {day} ({window_days} days) in {source}. "
               "Check the day, or that the pipeline has written shards.")
        raise UntrainableWindow(msg)
    return train_table(settings.models_dir, table, day, window_days=window_days, max_rows=max_rows,
                       seed=seed, **kwargs)


#: Modules a training imports on first use; the warm trainer imports them before it has a job. Not
#: ONNX Runtime: its import starts a native thread, which a forked child would not have (see
#: :func:`workbench.ml._forkserver.fork_job`); each training imports it itself (~0.05 s).
_TRAINING_MODULES = ("workbench.store.shards", "sklearn.ensemble", "skl2onnx", "skl2onnx.common.data_types",
                     "scipy.special")


def _import_training_modules() -> None:
    """Import :data:`_TRAINING_MODULES` with the cyclic garbage collector paused, then freeze their objects.

    The imports create ~330k objects (scipy.stats, sklearn, skl2onnx's operator classes); with the
    collector on, its passes over that growing heap took 0.2-0.7 of the imports' 2-3.5 CPU seconds
    (more on a busy machine). What they keep lives as long as the process, so after one collection it
    is left out of the training's own collections too (:func:`gc.freeze`), which also keeps a forked
    training from copying the pages the collector would otherwise touch.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in _TRAINING_MODULES:
            _import_quietly(name)
        gc.collect()
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def standby(replies_fd: int) -> int:
    """The warm trainer: import everything a training needs once, then fork a training per job.

    The supervisor (:class:`~workbench.ml.supervisor.TrainingSupervisor`, through
    :class:`~workbench.ml._standby.WarmStandby`) starts this process ahead of time and keeps it, so
    that the imports (2-4 s CPU) are paid once per scoring app instead of once per training. A job is
    one JSON line on stdin: ``{"argv": [...], "log": path}``, the command-line arguments of
    :func:`main` and the day's log file; the forked child writes to that log, binds to the
    workbench's supervisor (:func:`main`) and exits with :func:`main`'s code. Replies go to
    ``replies_fd`` (see :func:`workbench.ml._forkserver.serve`). End of file on stdin (the supervisor
    closed the pipe, exited or was killed) ends the warm trainer; a training it forked runs on and,
    like one started from the command line, outlives a restart of the scoring app.

    The warm trainer itself does not bind to the supervisor: its watchdog would be a thread at every
    fork. It ends with its parent instead (the pipe), and the parent with the supervisor.
    """
    standby_since = time.time()
    _import_training_modules()
    imports_s = time.time() - standby_since
    print(f"training standby ready pid={os.getpid()} imports_s={imports_s:.2f}", flush=True)  # its own log
    warm = (os.getpid(), standby_since, imports_s)
    return serve(lambda job: _forked_training(job, warm), jobs_fd=sys.stdin.fileno(), replies_fd=replies_fd)


def _forked_training(job: dict[str, Any], warm: tuple[int, float, float]) -> int:
    """A training forked by the warm trainer: the day's log as output, then :func:`main`."""
    _redirect_output(Path(job["log"]))
    _retitle(f"python -m workbench.ml._train {' '.join(job['argv'])} (forked by warm trainer {warm[0]})")
    try:
        return main(job["argv"], warm=warm)
    finally:
        logging.shutdown()


def _retitle(title: str) -> None:
    """Show ``title`` as this process's command line (``ps``, ``top``): a fork keeps the warm trainer's.

    Within the length of the original command line only (``SPT_NOENV``): a longer title would overwrite
    the environment block, where :func:`workbench._lifeline.home_processes` reads the process's tags.
    """
    os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except Exception:  # cosmetic: a training never fails for its title
        logging.getLogger(__name__).debug("could not set the process title", exc_info=True)


def _redirect_output(log_path: Path) -> None:
    """Point stdout and stderr at ``log_path`` (append) and stdin at /dev/null: the day's log, no pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(null, 0)
    finally:
        os.close(fd)
        os.close(null)


def main(argv: Sequence[str] | None = None, *, warm: tuple[int, float, float] | None = None) -> int:
    """Entry point of the training subprocess (``warm``: the warm trainer's pid, start time and import seconds)."""
    bind_to_supervisor()  # dies with the workbench's supervisor, not with the scoring app
    parser = argparse.ArgumentParser(prog="python -m workbench.ml._train")
    parser.add_argument("--day", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--home")
    parser.add_argument("--window-days", type=int, default=defaults.TRAIN_WINDOW_DAYS)
    parser.add_argument("--max-rows", type=int, default=defaults.TRAIN_MAX_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="a Parquet log instead of the shards")
    args = parser.parse_args(argv)
    settings = get_settings(home=args.home)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / f"train_{args.day.isoformat()}.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if sys.stderr.isatty():  # under the supervisor stderr already goes to the same log file
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers)
    if warm is not None:
        logger.info("warm trainer forked the job pid=%d trainer_pid=%d trainer_since=%s imports_s=%.2f",
                    os.getpid(), warm[0], dt.datetime.fromtimestamp(warm[1], dt.UTC).isoformat(), warm[2])
    logger.info("training started day=%s home=%s", args.day, settings.home)
    try:
        result = train_day(settings, args.day, window_days=args.window_days, max_rows=args.max_rows,
                           seed=args.seed, data=args.data)
    except UntrainableWindow as exc:
        logger.error("training failed day=%s error=%s", args.day, exc)
        return UNTRAINABLE_RC
    except WorkbenchError as exc:
        logger.error("training failed day=%s error=%s", args.day, exc)
        return 1
    except Exception:
        logger.exception("training crashed day=%s", args.day)
        return 1
    logger.info("SUCCESS version=%s seconds=%.1f", result.version, result.seconds)
    logger.info("training process cpu_s=%.2f peak_rss_mb=%.0f", time.process_time(),
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return 0


if __name__ == "__main__":
    code = standby(int(sys.argv[2])) if sys.argv[1:2] == ["--standby"] else main()
    # The version is published (or the failure logged): skip the interpreter's teardown. Freeing the
    # training data and module state took 0.5-1.7 s on 2 busy cores, and the scoring app starts the
    # next day's training (the drain's critical path) only once this process is gone.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
