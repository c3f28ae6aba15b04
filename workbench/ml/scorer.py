"""Scoring with ONNX Runtime: features, both regressors, the detector, model hot swap.

:class:`Scorer` follows the registry's ``CURRENT`` pointer. Each :meth:`Scorer.score` call first
``stat``\\ s the pointer (inode, mtime, size: microseconds); when it changed, the new version is
loaded in a background thread while the old one keeps scoring, and the first call after the load
completed uses it: a retraining never pauses the stream and no batch is scored by a half-loaded
model. Loaded versions are cached (the last two).

With ``by_event_time=True`` the scorer follows the rule of :mod:`workbench.ml.selection`
instead: each row is scored by the version selected for its own UTC event day (several
versions loaded at once, least recently used evicted beyond ``max_loaded``), and
:meth:`Scorer.ready` tells the app whether a day's version exists yet, so it can hold the
day's events instead of scoring them with whatever version happens to exist.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from workbench.ml.detector import (
    FIRST_SPILL_REASON,
    RECORD_SPILL_REASON,
    SHORT_RUN_REASON,
    SHORT_SCAN_REASON,
    SHORTEST_RUN,
    SMALLEST_SCAN,
    SPILL_HISTORY,
    UNITS,
    ResidualDetector,
)
from workbench.ml.exceptions import MLError
from workbench.ml.features import (
    INPUT_COLUMNS,
    OBSERVED_COLUMNS,
    REFERENCE_SOURCES,
    FeatureBuilder,
    _as_table,
    check_columns,
    observed_signals,
)
from workbench.ml.models import OnnxPair
from workbench.ml.registry import MODEL_JSON, ModelRegistry
from workbench.ml.selection import Cadence, VersionWindow, is_ready, may_accept, select_version
from workbench.store.shards import SCORE_FIELDS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXTRA_FIELDS", "SCORE_FIELDS", "USUAL_HOURS_FILE", "LoadedModel", "Scorer", "load_features",
           "load_usual_hours", "reference_label"]

logger = logging.getLogger(__name__)

#: Extra per-query values for the anomaly topic (not stored in shards).
EXTRA_FIELDS: tuple[pa.Field, ...] = (
    # context: the statement's median runtime in the training window (its instance's when never seen);
    # the verdict's expectation is expected_value
    pa.field("expected_ms", pa.float64()),
    pa.field("exec_ratio", pa.float64()),  # actual / predicted mean runtime
    # Evidence of the deciding signal (the one with the highest score), for every row:
    pa.field("evidence_signal", pa.string()),  # exec | queue | scan | spill | compile
    pa.field("evidence_unit", pa.string()),  # ms | MB
    pa.field("expected_value", pa.float64()),  # what the version expected for this query
    pa.field("observed_value", pa.float64()),
    pa.field("excess_value", pa.float64()),  # observed - expected
    pa.field("reference", pa.string()),  # what it was compared with, e.g. "the runtime model's prediction from ..."
)
_ALL_SCORE_NAMES = {f.name for f in SCORE_FIELDS + EXTRA_FIELDS}
_BASE_REQUIRED = INPUT_COLUMNS + OBSERVED_COLUMNS
_DAY_US = 86_400_000_000
#: Seconds between two looks at the registry while a version is damaged (to see it repaired).
BROKEN_RECHECK_S = 5.0


def load_features(registry: ModelRegistry, version: str, *, verify: bool = True
                  ) -> tuple[dict[str, Any], FeatureBuilder]:
    """A version's metadata and fitted :class:`FeatureBuilder`, without its ONNX sessions.

    The files are SHA-256 checked when ``verify``.
    """
    if verify:
        registry.verify(version)
    folder = registry.path(version)
    meta = json.loads((folder / MODEL_JSON).read_text())
    return meta, FeatureBuilder.load(folder, meta["features"])


#: A version's groups that run slower or wait longer at an hour of the day as a rule
#: (:func:`~workbench.analysis.slower_groups.usual_group_hours`); versions trained before have none.
USUAL_HOURS_FILE = "usual_group_hours.parquet"


def load_usual_hours(registry: ModelRegistry, version: str) -> pd.DataFrame | None:
    """A version's :data:`USUAL_HOURS_FILE` with a ``model_version`` column (None when it has none)."""
    return _read_usual_hours(registry.path(version), version)


def _read_usual_hours(folder: Path, version: str) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    path = folder / USUAL_HOURS_FILE
    if not path.exists():
        return None
    return pq.read_table(path).to_pandas().assign(model_version=version)


@dataclass
class LoadedModel:
    """One registered version, ready to score."""

    version: str
    meta: dict[str, Any]
    features: FeatureBuilder
    regressors: OnnxPair
    detector: ResidualDetector
    threads: int = 1  # row chunks scored in parallel (each session itself is single-threaded)
    folder: Path | None = None  # the version's files, for what only some callers read (usual_hours)

    @functools.cached_property
    def usual_hours(self) -> pd.DataFrame | None:
        """Its groups that run slower or wait longer at an hour of the day as a rule
        (:func:`load_usual_hours`), for a settled day's slower groups; None for a version trained before
        they were kept. Read on first use: scoring never needs them."""
        return None if self.folder is None else _read_usual_hours(self.folder, self.version)

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, *, intra_op_threads: int = 2,
             verify: bool = True) -> LoadedModel:
        """Load a version's files (SHA-256 checked when ``verify``)."""
        folder = registry.path(version)
        meta, features = load_features(registry, version, verify=verify)
        pair = OnnxPair(folder / meta["onnx"]["mean"], folder / meta["onnx"]["quantile"], intra_op_threads=1)
        detector = ResidualDetector.from_dict(meta["detector"])
        return cls(version=version, meta=meta, features=features, regressors=pair, detector=detector,
                   threads=max(1, intra_op_threads), folder=folder)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Input columns a batch must have."""
        return self.features.input_columns_ + OBSERVED_COLUMNS

    def predict(self, data: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        """All per-row model outputs as numpy arrays (see :data:`SCORE_FIELDS`)."""
        table = _as_table(data)
        check_columns(table.column_names, self.required_columns)
        X, refs, source = self.features.transform_with_evidence(table)
        mean_log, q_log = _batch_independent(self.regressors.predict_log, X, self.threads)
        observed = observed_signals(table)
        det = self.detector
        z = det.residuals(observed, mean_log, q_log, refs)
        expected = det.expected(mean_log, refs)
        excess = det.excess(observed, expected)
        score, alert, which = det.decide_with_signal(z, excess, source)
        signals = np.array(det.signals, dtype=object)
        reason = det.reasons(z, source, score, which, alert)
        pick = which[None, :]
        exp_v = np.take_along_axis(np.stack([expected[s] for s in det.signals]), pick, axis=0)[0]
        exc_v = np.take_along_axis(np.stack([excess[s] for s in det.signals]), pick, axis=0)[0]
        # the record paths compare a run with its statement's record: the largest spill, the shortest run
        for path, key in ((RECORD_SPILL_REASON, SPILL_HISTORY), (SHORT_RUN_REASON, SHORTEST_RUN),
                          (SHORT_SCAN_REASON, SMALLEST_SCAN)):
            record = reason == path
            if record.any():
                observed_v = exp_v + exc_v
                exp_v = np.where(record, np.expm1(np.nan_to_num(refs[key][0])), exp_v)
                exc_v = observed_v - exp_v
        labels = np.array([[reference_label(s, src) for src in REFERENCE_SOURCES] for s in det.signals],
                          dtype=object)
        pred_mean = np.expm1(np.clip(mean_log, 0.0, 50.0))
        exec_ms = np.expm1(observed["exec"])
        return {
            "pred_mean_ms": pred_mean,
            "pred_q_ms": np.expm1(np.clip(q_log, 0.0, 50.0)),
            "score": score,
            "is_anomaly": alert,
            "reason": reason,
            "model_version": np.full(len(score), self.version, dtype=object),
            "expected_ms": np.expm1(refs["exec"][0]),
            "exec_ratio": exec_ms / np.maximum(pred_mean, 1.0),
            "evidence_signal": signals[which],
            "evidence_unit": np.array([UNITS[s] for s in det.signals], dtype=object)[which],
            "expected_value": exp_v,
            "observed_value": exp_v + exc_v,
            "excess_value": exc_v,
            "reference": _with_history_labels(labels[which, source], reason, refs),
            "mean_log": mean_log,
            "q_log": q_log,
        }


def _with_history_labels(labels: np.ndarray, reason: np.ndarray, refs: dict[str, tuple[np.ndarray, np.ndarray]]
                         ) -> np.ndarray:
    """``labels`` with the record paths' reference: how many runs of the statement spilled nothing (a first
    spill), the largest spill of its runs (a spill beyond it), its shortest run in full (a run far
    shorter) or its smallest scan (a run that read far less)."""
    rows = np.flatnonzero((reason == FIRST_SPILL_REASON) | (reason == RECORD_SPILL_REASON)
                          | (reason == SHORT_RUN_REASON) | (reason == SHORT_SCAN_REASON))
    if not len(rows):
        return labels
    labels = labels.copy()
    for i in rows:
        if reason[i] == SHORT_SCAN_REASON:
            smallest, full = refs[SMALLEST_SCAN][0][i], refs[SMALLEST_SCAN][1][i]
            labels[i] = (f"this statement's smallest scan: {np.expm1(smallest):,.0f} MB in {full:.0f} runs "
                         "that did their work; the MB not read priced at the instance's reading pace")
        elif reason[i] == SHORT_RUN_REASON:
            shortest, full = refs[SHORTEST_RUN][0][i], refs[SHORTEST_RUN][1][i]
            labels[i] = (f"this statement's shortest run: {np.expm1(shortest):,.0f} ms in {full:.0f} runs "
                         "that did their work (no cache hit, no abort)")
        elif reason[i] == FIRST_SPILL_REASON:
            labels[i] = f"this statement's own runs: no spill in {refs[SPILL_HISTORY][1][i]:.0f} runs"
        else:
            largest, runs = refs[SPILL_HISTORY][0][i], refs[SPILL_HISTORY][1][i]
            labels[i] = f"this statement's largest spill: {np.expm1(largest):,.0f} MB in {runs:.0f} runs"
    return labels


#: Whose runs an expectation was learnt from, per reference source (:data:`REFERENCE_SOURCES`), in the words
#: of the alert's evidence ("model+plan/instance prior" read as jargon; browser tester, 40th session).
_SOURCE_WORDS = {
    "fingerprint": "this statement's own runs",
    "instance": "this instance's runs (the statement is new or rare here)",
    "global": "every instance's runs (this instance is new)",
}


def reference_label(signal: str, source: str) -> str:
    """What a signal's expectation was built from, in plain words, for the alert's evidence (``source``: one of
    :data:`~workbench.ml.features.REFERENCE_SOURCES`). The deferred rules' references start with it too."""
    runs = _SOURCE_WORDS.get(source, f"{source} history")
    if signal == "exec":
        plan = "" if source == "fingerprint" else "its plan and "
        return f"the runtime model's prediction from {plan}{runs}"
    if signal == "queue":
        return (f"the longest of its usual wait from {runs}, an ordinary wait on this instance, and its "
                "expected runtime")
    if signal == "spill":
        return f"its usual spill from {runs}, against the MB this query scanned"
    if signal == "compile":
        return f"its usual compile time when it compiles, from {runs}"
    return f"its usual MB scanned, from {runs}"


#: ONNX Runtime's TreeEnsemble adds up the trees in an order that depends on its thread count and
#: on the batch size (small batches are summed tree-parallel): the same row then scores differently
#: in the 6th digit depending on how the stream batched it and on the number of threads. Sessions
#: therefore run single-threaded (a row's trees are summed in one fixed order) and a large batch is
#: split into row chunks scored in parallel: a row's score is the same at any batch size, thread
#: count and replay speed.
_PARALLEL_MIN_ROWS = 8192
_POOL: ThreadPoolExecutor | None = None


def _batch_independent(predict: Any, X: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    global _POOL
    n = len(X)
    if threads <= 1 or n < _PARALLEL_MIN_ROWS:
        return predict(X)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="onnx")
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = list(_POOL.map(predict, [X[lo:hi] for lo, hi in itertools.pairwise(bounds)]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _append(table: pa.Table, values: dict[str, np.ndarray] | None) -> pa.RecordBatch:
    keep = [n for n in table.column_names if n not in _ALL_SCORE_NAMES]
    table = table.select(keep)
    n = table.num_rows
    for field in SCORE_FIELDS + EXTRA_FIELDS:
        arr = pa.nulls(n, field.type) if values is None else pa.array(values[field.name], field.type)
        table = table.append_column(field, arr)
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


class Scorer:
    """Scores Arrow batches with the current (or a pinned) model version.

    Parameters
    ----------
    models_dir : Path
        ``settings.models_dir``.
    version : str, optional
        Pin one version; ``None`` follows ``CURRENT`` and hot-swaps when it changes.
    intra_op_threads : int, default=2
        Row chunks of a large batch scored in parallel (each ONNX session runs single-threaded,
        so that scores do not depend on batching or thread count).
    background : bool, default=True
        Load a new current version in a background thread (~0.1-0.2 s for a 400k-row model)
        and keep scoring with the old one until it is ready, so the swap costs the stream no
        pause. The very first model is always loaded synchronously.
    by_event_time : bool, default=False
        Score each row with the version selected for its event day (:mod:`workbench.ml.selection`)
        instead of following ``CURRENT``; a person's pin (``set-current``) still wins.
    max_loaded : int, default=4
        Versions kept loaded in event-time mode (least recently used evicted).
    cadence : callable, optional
        Event-time mode: ``() -> Cadence | None`` (the training schedule, e.g. from the
        supervisor's state). When given, rows of days that are not :meth:`ready` stay unscored
        (null) instead of being scored by a version that is not their final one.
    """

    def __init__(self, models_dir: Path, *, version: str | None = None, intra_op_threads: int = 2,
                 background: bool = True, by_event_time: bool = False, max_loaded: int = 4,
                 cadence: Callable[[], Cadence | None] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.pinned_version = version
        self.intra_op_threads = intra_op_threads
        self.background = background
        self._registry = ModelRegistry(self.models_dir)
        self._cache: dict[str, LoadedModel] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._model: LoadedModel | None = None
        self._pending: tuple[str, Future[LoadedModel]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.by_event_time = by_event_time and version is None
        self.max_loaded = max(1, int(max_loaded))
        self._lru: OrderedDict[str, LoadedModel] = OrderedDict()
        self._broken: dict[str, tuple] = {}  # version -> its files' stamp when it failed to load
        self._broken_checked = 0.0  # monotonic time the registry was last read again for them
        self._windows: list[VersionWindow] = []
        self._windows_stamp: tuple[int, ...] | None = None
        self._pinned: str | None = None
        self.cadence = cadence

    @property
    def version(self) -> str | None:
        """The version the next :meth:`score` call uses (after checking the pointer)."""
        self.refresh()
        return self._model.version if self._model else None

    @property
    def current_name(self) -> str | None:
        """The pinned or ``CURRENT`` version's name, read without loading any model (status, start-up)."""
        if self.pinned_version is not None:
            return self.pinned_version
        if self._model is not None:
            return self._model.version
        try:
            return self._registry.current()
        except (OSError, MLError):
            return None

    @property
    def model(self) -> LoadedModel | None:
        """The loaded model (``None`` while no version exists)."""
        self.refresh()
        return self._model

    @property
    def swap_pending(self) -> bool:
        """True while a new current version loads in the background."""
        return self._pending is not None

    def refresh(self) -> bool:
        """Check the pointer (one ``stat``) and swap in a loaded new version; True if swapped."""
        if self.pinned_version is not None:
            if self._model is None:
                self._model = self._load(self.pinned_version)
                return True
            return False
        swapped = self._finish_pending()
        try:
            st = os.stat(self._registry.current_path)
        except FileNotFoundError:
            return swapped
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return swapped
        self._stamp = stamp
        version = self._registry.current()
        current = self._model.version if self._model else None
        if version is None or version == current:
            return swapped
        if self._pending is not None and self._pending[0] == version:
            return swapped
        if self._model is None or not self.background:
            try:
                self._install(self._load(version))
            except (MLError, OSError) as exc:
                logger.error("cannot load new current model version=%s error=%s", version, exc)
                self._stamp = None  # try again on the next call
                return swapped
            return True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._pending = (version, self._executor.submit(self._load, version))
        logger.info("loading new current model in background version=%s", version)
        return swapped

    def wait_for_swap(self, timeout: float = 30.0) -> str | None:
        """Block until a background load finished (tests, shutdown); returns the version in use."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending[1].result(timeout=timeout)
        self.refresh()
        return self._model.version if self._model else None

    def _finish_pending(self) -> bool:
        if self._pending is None or not self._pending[1].done():
            return False
        version, future = self._pending
        self._pending = None
        try:
            self._install(future.result())
        except (MLError, OSError) as exc:
            logger.error("cannot load new current model version=%s error=%s", version, exc)
            self._stamp = None
            return False
        return True

    def _install(self, model: LoadedModel) -> None:
        previous = self._model.version if self._model else None
        self._model = model
        logger.info("scorer swapped model previous=%s current=%s", previous, model.version)

    def _load(self, version: str) -> LoadedModel:
        if version not in self._cache:
            loaded = LoadedModel.load(self._registry, version, intra_op_threads=self.intra_op_threads)
            self._cache[version] = loaded
            for old in list(self._cache)[:-2]:
                del self._cache[old]
        return self._cache[version]

    # --- event-time selection -------------------------------------------------------------------
    def _refresh_windows(self) -> None:
        """Re-read versions and the pin when the registry changed (two ``stat`` calls otherwise)."""
        stamp: list[int] = []
        for path in (self._registry.versions_dir, self._registry.pinned_path):
            try:
                st = os.stat(path)
                stamp += [st.st_ino, st.st_mtime_ns, st.st_size]
            except FileNotFoundError:
                stamp += [0, 0, 0]
        # A damaged version is looked at again every few seconds: a file copied back into its folder
        # changes neither stamp (a repaired version stayed skipped until something else touched versions/).
        recheck = bool(self._broken or self._registry.unreadable) and (
            time.monotonic() - self._broken_checked >= BROKEN_RECHECK_S)
        if tuple(stamp) == self._windows_stamp and not recheck:
            return
        self._windows_stamp = tuple(stamp)
        self._broken_checked = time.monotonic()
        self._pinned = self._registry.pinned()
        self._windows = [w for w in self._registry.windows() if not self._is_broken(w.version)]

    def _folder_stamp(self, version: str) -> tuple:
        """Every file of a version folder with its size and mtime (a repaired file changes it)."""
        folder = self._registry.versions_dir / version
        try:
            return tuple(sorted((p.name, st.st_mtime_ns, st.st_size) for p in folder.iterdir() for st in [p.stat()]))
        except OSError:
            return ()

    def _is_broken(self, version: str) -> bool:
        if version not in self._broken:
            return False
        if self._folder_stamp(version) != self._broken[version]:
            del self._broken[version]  # changed meanwhile (repaired, replaced): try again
            return False
        return True

    @property
    def unreadable_versions(self) -> list[str]:
        """Versions skipped as unreadable now (a damaged file, or a ``model.json`` that cannot be read):
        the version before each scores its days until it is repaired."""
        return sorted(set(self._broken) | set(self._registry.unreadable))

    @property
    def windows(self) -> list[VersionWindow]:
        """The readable versions in training-window order (event-time mode)."""
        self._refresh_windows()
        return list(self._windows)

    def version_for(self, day: dt.date) -> str | None:
        """The version that scores events of ``day`` now (``None`` while none exists)."""
        self._refresh_windows()
        return select_version(day, self._windows, pinned=self._pinned)

    def ready(self, day: dt.date, cadence: Cadence | None) -> bool:
        """Whether ``day``'s final version (by the rule and the training cadence) exists now."""
        self._refresh_windows()
        return is_ready(day, self._windows, cadence, pinned=self._pinned)

    def accepts(self, day: dt.date, cadence: Cadence | None) -> bool:
        """Whether the app may store events of ``day`` now (:func:`~workbench.ml.selection.may_accept`)."""
        self._refresh_windows()
        return may_accept(day, self._windows, cadence, pinned=self._pinned)

    def _loaded(self, version: str) -> LoadedModel | None:
        """A loaded version from the LRU (loading it if needed); ``None`` if it cannot be read."""
        model = self._lru.get(version)
        if model is not None:
            self._lru.move_to_end(version)
            return model
        try:
            model = LoadedModel.load(self._registry, version, intra_op_threads=self.intra_op_threads)
        except (MLError, OSError, ValueError, KeyError) as exc:
            logger.error("skipping unreadable model version version=%s error=%s (the previous version scores)",
                         version, exc)
            self._broken[version] = self._folder_stamp(version)
            self._windows = [w for w in self._windows if w.version != version]
            return None
        self._lru[version] = model
        while len(self._lru) > self.max_loaded:
            self._lru.popitem(last=False)
        return model

    def _score_by_event_time(self, table: pa.Table) -> pa.RecordBatch:
        check_columns(table.column_names, _BASE_REQUIRED)
        self._refresh_windows()
        days = table.column("arrival_timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False) // _DAY_US
        outputs: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        cadence = self.cadence() if self.cadence is not None else None
        for d in np.unique(days):
            day = dt.date(1970, 1, 1) + dt.timedelta(days=int(d))
            if self.cadence is not None and not is_ready(day, self._windows, cadence, pinned=self._pinned):
                continue  # stays unscored until its final version exists
            rows = np.flatnonzero(days == d)
            while True:
                version = select_version(day, self._windows, pinned=self._pinned)
                model = None if version is None else self._loaded(version)
                if model is not None or version is None:
                    break
                if version == self._pinned:
                    self._pinned = None  # a pinned version that cannot be read: the rule applies
            if model is not None:
                part = table if len(rows) == len(days) else table.take(rows)
                outputs.append((rows, model.predict(part)))
        if not outputs:
            return _append(table, None)
        if len(outputs) == 1 and len(outputs[0][0]) == table.num_rows:
            return _append(table, outputs[0][1])
        merged: dict[str, np.ndarray] = {}
        for field in SCORE_FIELDS + EXTRA_FIELDS:
            column = np.full(table.num_rows, None, dtype=object)
            for rows, values in outputs:
                column[rows] = values[field.name]
            merged[field.name] = column
        return _append(table, merged)

    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """The batch plus :data:`SCORE_FIELDS` and :data:`EXTRA_FIELDS` columns.

        When no model exists yet the score columns are null (``model_version`` null), so the
        rows can be stored and scored later (:func:`workbench.store.shards.rescore_unscored`).
        """
        table = _as_table(batch)
        if self.by_event_time:
            return self._score_by_event_time(table)
        model = self.model
        if model is None:
            check_columns(table.column_names, _BASE_REQUIRED)
            return _append(table, None)
        return _append(table, model.predict(table))
