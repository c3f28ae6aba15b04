"""Evaluation of a model version (or the baseline rules) on one labelled day of a query log.

Metrics (all from :mod:`sklearn.metrics` where one exists):

``PR-AUC``
    Average precision of the anomaly score against ``label_anomaly``.
``F1``, ``precision``, ``recall``, ``alerts per 10k``
    Of the alerts the pipeline raises: the detector's own decision (``is_anomaly``) and the
    queries the scoring app's deferred step flags a settled day later (:func:`deferred_alerts`):
    runs of a statement that stays slower (``persistent runs`` counts them) or creeps (``creeping
    runs``), queries of a slower part of an instance (``slower group queries``), runs of another
    instance's statements (``moved statement runs``) and runs on a never-seen instance far beyond its
    record of the day (``beyond-record runs``). PR-AUC and the equal-volume figures rank the
    per-query score.
``recall[<kind>]``
    Share of each injected kind that alerts.
``F1 @ baseline volume``
    F1 of the top-k scores where k is the number of baseline alerts on the same day, so the
    detector and the baseline are compared at the same alert volume.
``false alerts per 10k normal``
    Alerts on unlabelled rows per 10,000 unlabelled rows.
``recall@baseline volume[<kind>]``
    Per-kind recall of the detector's top-k scores, k = the baseline's alert count: the two
    detectors compared at equal alert volume.
``recall@baseline volume, alone[<kind>]`` (more than one kind labelled)
    The same with only that kind's rows and the normal rows, k = the baseline's alerts on them: a
    kind is not pushed out of the top k by another kind that scores higher (a log with the
    generator's kinds and injected ones).
``dominating normals`` (:func:`dominating_normals`, printed by ``benchmarks/detection.py``)
    For a missed anomaly, the normal rows at least as extreme on every signal where it exceeds
    its expectation: a lower bound on the false alerts any score that grows with excess and
    surprise must add to catch it.
``MAE(log)``, ``q90 coverage``
    Mean absolute error of the mean regressor and share of runtimes at or below the q90
    prediction, in ``log1p(ms)``.

Logs with collective kinds (``workbench generate --kinds all``, or any labelled log): rows of
window kinds (anomalous only together) are left out of the per-query metrics (neither positives nor
negatives; their per-query recall is still reported), and the windows are evaluated on their own
(:func:`window_metrics`): the day's 10-minute windows are computed from the log, flagged by
:mod:`workbench.analysis.collective` against the earlier days (on the signals of the window
statistics and on those of the model's expectations, the earlier days scored as the scoring app
scored them: :mod:`workbench.ml.residual_history`), and compared with the log's window labels:
``window recall[<kind>]`` and ``window precision`` (flagged labelled windows over flagged windows;
a flagged window holding labelled per-query anomalies is explained by them and counts on
neither side; ``windows explained[<kind>]`` counts them per kind they hold). The baseline
(the earlier rules) judges single queries and flags no window: its window recall is 0 for every
labelled window kind.

A log made by another tool says which of its kinds are collective, and where, in either of two
ways (:func:`window_kinds_of`, :func:`labelled_windows`): a window-label sidecar
(``LOG.windows.parquet``: ``instance_id``, ``window_start``, ``kind``; every kind it names is a
window kind), or the ``window_kinds`` argument (``--window-kinds``) naming kinds whose windows are
then those holding at least :data:`~workbench.data.generator.MIN_WINDOW_ROWS` of their labelled rows
(the generator's own rule). The generator's :data:`~workbench.data.generator.WINDOW_KINDS` are
always window kinds. A labelled row without a kind counts as kind ``unnamed``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from workbench.analysis._columns import numbers
from workbench.config import Settings
from workbench.ml._train import load_log_window
from workbench.ml.baseline import baseline_for_table
from workbench.ml.exceptions import MLError, UnlabelledDay
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel

__all__ = ["anomaly_kinds", "anomaly_labels", "detection_metrics", "dominating_normals", "evaluate", "format_table",
           "labelled_windows", "recall_at_volume", "regression_metrics", "require_labels", "top_k_f1",
           "window_kinds_of", "window_metrics"]

logger = logging.getLogger(__name__)


def detection_metrics(labels: np.ndarray, score: np.ndarray, alert: np.ndarray,
                      kinds: Sequence[str | None] | np.ndarray | None = None) -> dict[str, float]:
    """PR-AUC, F1, precision, recall, alerts per 10k, per-kind recall and (with several kinds) per-kind
    PR-AUC: that kind's rows against the normal rows, the other kinds left out."""
    labels = np.asarray(labels, dtype=bool)
    alert = np.asarray(alert, dtype=bool)
    out: dict[str, float] = {
        "rows": float(len(labels)),
        "anomalies": float(labels.sum()),
        "alerts": float(alert.sum()),
        "PR-AUC": float(average_precision_score(labels, score)) if labels.any() else float("nan"),
        "F1": float(f1_score(labels, alert, zero_division=0.0)),
        "precision": float(precision_score(labels, alert, zero_division=0.0)),
        "recall": float(recall_score(labels, alert, zero_division=0.0)),
        "alerts per 10k": float(alert.mean() * 1e4) if len(alert) else 0.0,
    }
    out["false alerts per 10k normal"] = float(alert[~labels].mean() * 1e4) if (~labels).any() else 0.0
    if kinds is not None:
        kinds_arr = np.asarray(kinds, dtype=object)
        present = sorted({k for k in kinds_arr[labels] if k is not None})
        for kind in present:
            sel = labels & (kinds_arr == kind)
            out[f"recall[{kind}]"] = float(alert[sel].mean())
        if len(present) > 1 and (~labels).any():  # one kind's rows against the normal rows (the others left out)
            for kind in present:
                sel = labels & (kinds_arr == kind)
                out[f"PR-AUC[{kind}]"] = float(average_precision_score(sel[sel | ~labels],
                                                                       np.asarray(score)[sel | ~labels]))
    return out


def recall_at_volume(labels: np.ndarray, score: np.ndarray, kinds: np.ndarray, k: int,
                     baseline_alert: np.ndarray | None = None) -> dict[str, float]:
    """Per-kind recall when exactly the ``k`` highest scores alert; with ``baseline_alert`` and more
    than one kind, also each kind alone against the normal rows (``recall@baseline volume, alone``:
    the other kinds' rows left out and k the baseline's alerts on what is left), which does not depend
    on what else is labelled that day (another source's rows, scoring higher, fill the shared top k)."""
    score = np.asarray(score, dtype=float)
    alert = np.zeros(len(labels), dtype=bool)
    if k > 0:
        alert[np.argsort(-score, kind="stable")[:k]] = True
    kinds = np.asarray(kinds, dtype=object)
    present = sorted({x for x in kinds[labels] if x is not None})
    out = {f"recall@baseline volume[{kind}]": float(alert[labels & (kinds == kind)].mean()) for kind in present}
    if baseline_alert is None or len(present) < 2:
        return out
    for kind in present:
        rows = np.flatnonzero((labels & (kinds == kind)) | ~labels)
        k_alone = int(np.asarray(baseline_alert, dtype=bool)[rows].sum())
        top = rows[np.argsort(-score[rows], kind="stable")[:k_alone]]
        out[f"recall@baseline volume, alone[{kind}]"] = float(labels[top].sum() / (labels[rows].sum() or 1))
    return out


def dominating_normals(missed: np.ndarray, normal: np.ndarray, excess: dict[str, np.ndarray],
                       log_ratio: dict[str, np.ndarray], stratum: np.ndarray | None = None) -> np.ndarray:
    """Number of ``normal`` rows that dominate each ``missed`` row on what the detector sees.

    ``missed`` and ``normal`` each select rows of the per-row arrays (``excess``, ``log_ratio``,
    ``stratum``: one value per row of the day), as row positions or as a boolean mask over every row;
    the counts follow ``missed``'s rows in order. A normal row dominates a missed one when, on every
    signal where the missed row exceeds its expectation (``excess > 0``), it has at least the same
    excess (natural units: seconds, MB) *and* at least the same ``log_ratio`` (observed over expected,
    log), within the same ``stratum`` (e.g. whether the row's references come from its own fingerprint
    history, so a well-known query is not compared with a never-seen one). Any score that does not fall
    as excess or surprise grows ranks every dominating row at least as high as the missed one, so the
    count bounds from below the false alerts such a detector must add to catch the miss: a miss
    dominated by dozens of normal rows is not catchable from these signals alone.
    """
    sized = [*excess.values(), *([] if stratum is None else [stratum]), *([normal] if _is_mask(normal) else [])]
    rows = len(sized[0]) if sized else int(np.max(normal, initial=-1)) + 1
    missed = (np.flatnonzero(_row_mask(missed, rows, "missed")) if _is_mask(missed)
              else _positions(missed, rows, "missed"))
    normal_rows = _row_mask(normal, rows, "normal")
    counts = np.zeros(len(missed), dtype=np.int64)
    for k, i in enumerate(missed):
        dominated = normal_rows.copy()
        if stratum is not None:
            dominated &= stratum == stratum[i]
        for signal, e in excess.items():
            if e[i] > 0:
                dominated &= (e >= e[i]) & (log_ratio[signal] >= log_ratio[signal][i])
        counts[k] = int(dominated.sum())
    return counts


def _is_mask(rows: np.ndarray) -> bool:
    return np.asarray(rows).dtype == bool


def _positions(rows: np.ndarray, n: int, name: str) -> np.ndarray:
    """Row positions (``rows`` of an integer type) checked against the day's ``n`` rows."""
    positions = np.asarray(rows)
    if positions.size and not np.issubdtype(positions.dtype, np.integer):
        msg = f"dominating_normals: {name!r} must be row positions or a boolean mask, not {positions.dtype} values"
        raise ValueError(msg)
    positions = positions.astype(np.int64).ravel()
    if positions.size and (positions.min() < -n or positions.max() >= n):
        msg = f"dominating_normals: {name!r} holds a row position outside the {n:,} rows of the signals"
        raise ValueError(msg)
    return positions


def _row_mask(rows: np.ndarray, n: int, name: str) -> np.ndarray:
    """A boolean mask over the day's ``n`` rows, from a mask of that length or from row positions."""
    if _is_mask(rows):
        mask = np.asarray(rows).ravel()
        if len(mask) != n:
            msg = (f"dominating_normals: the boolean mask {name!r} has {len(mask):,} values for {n:,} rows "
                   "of the signals")
            raise ValueError(msg)
        return mask
    mask = np.zeros(n, dtype=bool)
    mask[_positions(rows, n, name)] = True
    return mask


def anomaly_labels(table: pa.Table, data: Path) -> np.ndarray:
    """``label_anomaly`` as booleans (NULL is normal): a bool, integer (non-zero), true/false text or 0/1 float
    column (NaN is normal)."""
    column = table.column("label_anomaly")
    if pa.types.is_dictionary(column.type):  # as the readers of a log decode them (a pandas category, Spark's)
        column = column.cast(column.type.value_type)
    if pa.types.is_boolean(column.type):
        return column.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_integer(column.type):
        return pc.not_equal(column.fill_null(0), 0).to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        from workbench.data.schema import FALSE_WORDS, TRUE_WORDS, label_words

        words = label_words(column)
        odd = sorted({w for w in words if w and w not in TRUE_WORDS + FALSE_WORDS})  # "": NULL, normal
        if odd:
            msg = (f"Column 'label_anomaly' of {str(data)!r} holds text that is neither true nor false: "
                   f"{', '.join(map(repr, odd[:5]))}. Use true/false, t/f, yes/no or 1/0.")
            raise MLError(msg)
        return np.isin(words, TRUE_WORDS)
    if pa.types.is_floating(column.type):  # 0/1 beside NULLs, as pandas writes them (NaN: not labelled, normal)
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        odd = sorted({float(v) for v in values[np.isfinite(values) & (values != 0) & (values != 1)]}
                     | ({float("inf")} if np.isinf(values).any() else set()))
        if odd:
            msg = (f"Column 'label_anomaly' of {str(data)!r} holds {', '.join(map(repr, odd[:5]))}, neither 0 nor 1. "
                   "Use 1 for an anomaly, 0 (or NULL) for a normal row.")
            raise MLError(msg)
        return values == 1
    msg = (f"Column 'label_anomaly' of {str(data)!r} must be boolean (or 0/1, or true/false text). "
           f"Got {column.type} instead.")
    raise MLError(msg)


def _unlabelled_rows(column: pa.ChunkedArray) -> int:
    """Rows of a ``label_anomaly`` column that carry no label: NULL, or NaN in a float column (pandas' NULL)."""
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += int(pc.sum(pc.is_nan(column.drop_null())).as_py() or 0)
    return missing


def require_labels(data: Path) -> None:
    """Raise :class:`MLError` when ``label_anomaly`` of the log ``data`` (a file or a folder) is NULL on
    every row: the column is there but nothing was labelled, and NULL-is-normal would evaluate that as a
    log without a single anomaly (a PR-AUC of nothing, every alert false) instead of saying so."""
    import pyarrow.parquet as pq

    from workbench.replay._source import log_parts

    rows = nulls = 0
    for part in log_parts(Path(data)):
        file = pq.ParquetFile(part)
        if "label_anomaly" not in file.schema_arrow.names:
            return  # an unlabelled part: the callers say which columns are missing
        rows += file.metadata.num_rows
        nulls += _unlabelled_rows(file.read(columns=["label_anomaly"]).column(0))
        if nulls < rows:
            return
    if rows:
        msg = (f"Column 'label_anomaly' of {str(data)!r} is NULL on all {rows:,} rows: the log carries no labels. "
               "Label anomalies true (normal rows false or NULL); a log without labels is scored by "
               "replaying it (the notebooks and `workbench report` show its alerts).")
        raise MLError(msg)


def anomaly_kinds(table: pa.Table, labels: np.ndarray, data: Path | None = None) -> np.ndarray:
    """``label_kind`` per row as text (None for normal rows); a labelled row without one, or without the column,
    is ``unnamed``. Codes are read as :func:`~workbench.data.schema.kind_names` reads them (3 or 3.0: ``"3"``);
    ``data`` names the log in its errors."""
    from workbench.data.schema import kind_names

    kinds = (np.asarray(kind_names(table.column("label_kind"), data or "the labelled table").to_pylist(),
                        dtype=object) if "label_kind" in table.column_names
             else np.full(table.num_rows, None, dtype=object))
    kinds[labels & pd.isna(kinds)] = "unnamed"
    return kinds


def window_kinds_of(data: Path, named: Sequence[str] = (), *, sidecar: pa.Table | None = None) -> set[str]:
    """The kinds of ``data`` judged at window level: the generator's, the sidecar's and ``named`` (see above).

    ``sidecar``: the log's window labels when the caller has read them (read here otherwise).
    """
    from workbench.data.generator import WINDOW_KINDS, window_labels

    named_there = (window_labels(data) if sidecar is None else sidecar).column("kind").to_pylist()
    return set(WINDOW_KINDS) | {k for k in named_there if k is not None} | set(named)


def labelled_windows(data: Path, day_rows: pa.Table, day: dt.date, kinds: set[str], *,
                     sidecar: pa.Table | None = None) -> pd.DataFrame:
    """``instance_id``, ``window_start`` (UTC), ``kind`` of the labelled collective windows of ``day``.

    The sidecar's windows (``sidecar``: as the caller read them; read here otherwise); a window kind
    with none there on ``day`` gets the windows where at least
    :data:`~workbench.data.generator.MIN_WINDOW_ROWS` of ``day_rows`` carry its label.
    """
    from workbench.data.generator import MIN_WINDOW_ROWS, window_labels

    start = pd.Timestamp(day, tz="UTC")
    labels = (window_labels(data) if sidecar is None else sidecar).to_pandas()
    labels["window_start"] = pd.to_datetime(labels["window_start"], utc=True)
    labels = labels[(labels["window_start"] >= start) & (labels["window_start"] < start + pd.Timedelta(days=1))]
    missing = kinds - set(labels["kind"])
    if missing and "label_kind" in day_rows.column_names:
        rows = pd.DataFrame({"instance_id": day_rows.column("instance_id").to_numpy(zero_copy_only=False),
                             "window_start": pd.to_datetime(day_rows.column("arrival_timestamp")
                                                            .to_numpy(zero_copy_only=False), utc=True).floor("10min"),
                             "kind": day_rows.column("label_kind").to_pylist()})
        rows = rows[rows["kind"].isin(missing) & anomaly_labels(day_rows, data)]
        counts = rows.groupby(["instance_id", "window_start", "kind"]).size().reset_index(name="rows")
        derived = counts.loc[counts["rows"] >= MIN_WINDOW_ROWS, ["instance_id", "window_start", "kind"]]
        labels = pd.concat([labels, derived], ignore_index=True)
    return labels.reset_index(drop=True)


def window_metrics(data: Path, day: dt.date, history_days: int = 7, window_kinds: Sequence[str] = (), *,
                   sidecar: pa.Table | None = None, model: LoadedModel | None = None,
                   registry: ModelRegistry | None = None, history_cache: Path | None = None) -> dict[str, float]:
    """Window-level precision and per-kind recall of the collective detector on one day (see above).

    ``sidecar``: the log's window labels (``LOG.windows.parquet``) when the caller has read them.
    ``model``: the version that scores ``day``; with it the windows are also judged on the signals
    of the model's expectations (``runtime_residual``, ``beyond_tolerance_share``), as the scoring
    app judges them, the earlier days scored as it scored them
    (:func:`~workbench.ml.residual_history.reference_residuals`: ``registry``'s versions, or ones
    trained for the purpose, in a folder of ``history_cache`` kept for the next call on the same log and
    code, :func:`~workbench.ml.residual_history.history_folder`, or else in a temporary folder). Without
    it, only the signals of the window statistics (tester B, 34th session: 0.03 window recall where the
    running product flagged 30 of 36).
    """
    return _window_judgement(data, day, history_days, window_kinds, sidecar=sidecar, model=model, registry=registry,
                             history_cache=history_cache)[0]


def _window_judgement(data: Path, day: dt.date, history_days: int = 7, window_kinds: Sequence[str] = (), *,
                      sidecar: pa.Table | None = None, model: LoadedModel | None = None,
                      registry: ModelRegistry | None = None, history_cache: Path | None = None
                      ) -> tuple[dict[str, float], pd.DataFrame]:
    """:func:`window_metrics`, and the day's flagged ``(window, signal)`` rows with their ``verdict``:
    ``labelled`` (a window label of ``label``), ``explained`` (holding labelled per-query anomalies of
    ``label``) or ``false``."""
    from workbench.analysis.collective import flag_windows, windows_of, with_silent_windows
    from workbench.data.generator import MIN_WINDOW_ROWS, window_labels

    if sidecar is None:
        sidecar = window_labels(data)

    table = load_log_window(Path(data), day, history_days + 1)
    windows = windows_of(table)
    if windows.empty:
        return {}, _flagged_details(pd.DataFrame(columns=["instance_id", "window_start"]), {}, {})
    start = pd.Timestamp(day, tz="UTC")
    if model is not None:
        windows = _with_model_residuals(Path(data), day, table, windows, model, registry, history_cache)
    windows = with_silent_windows(windows)
    today = windows[windows["window_start"] >= start]
    flagged = flag_windows(today, windows).to_pandas()
    flagged_keys = set(zip(flagged["instance_id"], pd.to_datetime(flagged["window_start"], utc=True), strict=True))
    day_rows = table.filter(pc.greater_equal(table.column("arrival_timestamp"),
                                             pa.scalar(start.to_pydatetime(), pa.timestamp("us", tz="UTC"))))
    wanted = window_kinds_of(Path(data), window_kinds, sidecar=sidecar)
    labels = labelled_windows(Path(data), day_rows, day, wanted, sidecar=sidecar)
    label_keys = set(zip(labels["instance_id"], labels["window_start"], strict=True))
    lab = anomaly_labels(day_rows, Path(data))
    kinds = anomaly_kinds(day_rows, lab, Path(data))[lab] if lab.any() else np.array([], dtype=object)
    # a window kind's rows left the per-query figures: said when no window holds them either
    for kind in sorted((set(wanted) & {str(k) for k in kinds}) - set(labels["kind"])):
        logger.warning("window kind %r has no window on %s with at least %d of its labelled rows (and none in "
                       "a window-label file): its rows leave the per-query figures and no window judges them",
                       kind, day, MIN_WINDOW_ROWS)
    ts = pd.to_datetime(day_rows.column("arrival_timestamp").to_numpy(zero_copy_only=False)[lab], utc=True)
    # the labelled rows' windows, and which kinds they hold (blind test, 37th session: the window layer saw a
    # contextual kind's episode, and no figure said so)
    held = pd.DataFrame({"instance_id": day_rows.column("instance_id").to_numpy(zero_copy_only=False)[lab],
                         "window_start": ts.floor("10min"), "kind": kinds})
    explained = set(zip(held["instance_id"], held["window_start"], strict=True)) - label_keys
    tp = len(flagged_keys & label_keys)
    fp = len(flagged_keys - label_keys - explained)
    out: dict[str, float] = {"windows": float(len(today)), "windows flagged": float(len(flagged_keys)),
                             # flagged, unlabelled, holding a labelled query: on neither side (tester D, 35th
                             # session: "windows flagged" did not add up without it)
                             "windows flagged, explained by a labelled query": float(len(flagged_keys & explained)),
                             "window precision": tp / (tp + fp) if tp + fp else float("nan"),
                             "false windows per 1k": 1e3 * fp / max(len(today) - len(label_keys), 1)}
    for kind, group in labels.groupby("kind"):
        keys = set(zip(group["instance_id"], group["window_start"], strict=True))
        out[f"window recall[{kind}]"] = len(keys & flagged_keys) / len(keys)
    seen = flagged_keys & explained
    for kind, group in held.groupby("kind"):
        keys = set(zip(group["instance_id"], group["window_start"], strict=True)) & seen
        if keys:
            out[f"windows explained[{kind}]"] = float(len(keys))
    labelled = labels.groupby(["instance_id", "window_start"])["kind"].agg(lambda k: ",".join(sorted(set(k))))
    held_by = held.groupby(["instance_id", "window_start"])["kind"].agg(lambda k: ",".join(sorted(set(map(str, k)))))
    return out, _flagged_details(flagged, labelled.to_dict(), {k: v for k, v in held_by.items() if k in explained})


def _flagged_details(flagged: pd.DataFrame, labelled: dict, explained: dict) -> pd.DataFrame:
    """The flagged windows with their verdict and label (see :func:`_window_judgement`)."""
    frame = flagged.copy()
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    keys = list(zip(frame["instance_id"], frame["window_start"], strict=True))
    frame["verdict"] = ["labelled" if k in labelled else "explained" if k in explained else "false" for k in keys]
    frame["label"] = [labelled.get(k, explained.get(k)) for k in keys]
    return frame.reset_index(drop=True)


def _with_model_residuals(data: Path, day: dt.date, table: pa.Table, windows: pd.DataFrame, model: LoadedModel,
                          registry: ModelRegistry | None, history_cache: Path | None = None) -> pd.DataFrame:
    """``windows`` with the residual columns: ``day`` scored by ``model``, the days before as the scoring
    app scored them."""
    import tempfile

    from workbench.data.schema import datetime_from_us
    from workbench.ml.residual_history import history_folder, reference_residuals, residuals_of, with_residuals
    from workbench.replay._source import LogFile

    first = pc.min(table.column("arrival_timestamp")).as_py().date()  # of the history window
    log_start = datetime_from_us(LogFile(data).first_time_us())  # the one day its scoring app scored in-sample
    log_first = first if log_start is None else log_start.date()
    frames = [residuals_of(model, load_log_window(data, day, 1))]
    if first < day:
        with contextlib.ExitStack() as stack:
            folder = (history_folder(history_cache, data) if history_cache is not None
                      else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="workbench-window-history-"))))
            frames.insert(0, reference_residuals(data, first, day - dt.timedelta(days=1), folder,
                                                 registry=registry, log_first=log_first))
    return with_residuals(windows, pd.concat(frames, ignore_index=True))


def _query_details(table: pa.Table, labels: np.ndarray, kinds: np.ndarray, per_query: np.ndarray,
                   score: np.ndarray, first_alert: np.ndarray, reasons: np.ndarray, alert: np.ndarray,
                   out: dict[str, np.ndarray] | None) -> pa.Table:
    """Every query of an evaluated day with its verdict (``evaluate(details=...)``'s ``queries.parquet``)."""
    columns = {
        "instance_id": table.column("instance_id"), "query_id": table.column("query_id"),
        "arrival_timestamp": table.column("arrival_timestamp"),
        "label_anomaly": pa.array(labels, pa.bool_()),
        "label_kind": _text(kinds),
        # False for a window kind's rows: judged per window, neither positive nor negative per query
        "per_query": pa.array(per_query, pa.bool_()),
        "score": pa.array(score, pa.float64()),
        "detector_alert": pa.array(first_alert, pa.bool_()),
        "deferred_reason": _text(reasons),
        "alert": pa.array(alert, pa.bool_()),
    }
    if out is not None:
        for name, kind in (("reason", pa.string()), ("evidence_signal", pa.string()), ("expected_value", pa.float64()),
                           ("observed_value", pa.float64()), ("excess_value", pa.float64()),
                           ("reference", pa.string()), ("pred_mean_ms", pa.float64())):
            columns[name] = _text(out[name]) if kind == pa.string() else pa.array(out[name], kind)
    return pa.table(columns)


def _text(values: np.ndarray) -> pa.Array:
    """An object array as text (whatever each value's type: a kind stored as an integer code reads ``3``)."""
    return pa.array([None if v is None else str(v) for v in np.asarray(values, dtype=object).tolist()], pa.string())


def _details_folder(folder: Path) -> None:
    """Make ``folder`` for :func:`write_details`, or raise :class:`MLError` saying why it cannot be one."""
    if folder.exists() and not folder.is_dir():
        msg = f"details folder {folder} is a file; name a folder (it is made when missing)"
        raise MLError(msg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"details folder {folder} cannot be made: {exc.strerror or exc}"
        raise MLError(msg) from exc


def write_details(folder: Path, queries: pa.Table, windows: pd.DataFrame | None) -> dict[str, str]:
    """Write ``queries.parquet`` and ``windows.parquet`` (the flagged windows; empty without any) into ``folder``
    and return their paths."""
    import pyarrow.parquet as pq

    _details_folder(folder)
    paths = {"queries": folder / "queries.parquet", "windows": folder / "windows.parquet"}
    pq.write_table(queries, paths["queries"])
    frame = windows if windows is not None else pd.DataFrame(
        {"instance_id": pd.Series(dtype="int64"), "window_start": pd.Series(dtype="datetime64[ms, UTC]"),
         "signal": pd.Series(dtype="object"), "verdict": pd.Series(dtype="object"),
         "label": pd.Series(dtype="object")})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), paths["windows"])
    return {name: str(path) for name, path in paths.items()}


def top_k_f1(labels: np.ndarray, score: np.ndarray, k: int) -> float:
    """F1 when exactly the ``k`` highest scores alert (ties broken by position)."""
    labels = np.asarray(labels, dtype=bool)
    alert = np.zeros(len(labels), dtype=bool)
    if k > 0:
        alert[np.argsort(-np.asarray(score), kind="stable")[:k]] = True
    return float(f1_score(labels, alert, zero_division=0.0))


def regression_metrics(y_log: np.ndarray, mean_log: np.ndarray, q_log: np.ndarray) -> dict[str, float]:
    """``MAE(log)`` of the mean model and ``q90 coverage`` of the quantile model, over the rows with a runtime
    (``y_log`` finite; NaN for both without one). A row without one (NULL) was read as a 0 ms run: 30 % of
    them made the MAE 1.75 for 0.56, a day without any a coverage of 1.0 (tester, 40th session);
    ``rows without a runtime`` counts them when there are any."""
    y_log, mean_log, q_log = (np.asarray(v, dtype=np.float64) for v in (y_log, mean_log, q_log))
    known = np.isfinite(y_log)
    out = {"MAE(log)": float(np.mean(np.abs(y_log - mean_log)[known])) if known.any() else float("nan"),
           "q90 coverage": float(np.mean((y_log <= q_log)[known])) if known.any() else float("nan")}
    if not known.all():
        out["rows without a runtime"] = float((~known).sum())
    return out


def format_table(metrics: dict[str, Any]) -> str:
    """One ``label  value`` line per metric."""
    width = max(len(k) for k in metrics)
    lines = []
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else str(
            int(value) if isinstance(value, float) else value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def window_labels_exist(data: Path) -> bool:
    """True when the log has a window-label sidecar (a stress-pack log)."""
    from workbench.data.generator import window_labels_path

    return window_labels_path(data).exists()


def deferred_metric_reasons() -> dict[str, tuple[str, ...]]:
    """The metrics that count the deferred step's alerts (``persistent runs``, ...), and the reasons each counts:
    one per rule of :data:`~workbench.analysis.deferred.DEFERRED_RULES`."""
    from workbench.analysis.deferred import DEFERRED_RULES

    return {rule.metric: rule.reasons for rule in DEFERRED_RULES.values()}


def deferred_alerts(table: pa.Table, out: dict[str, np.ndarray], model: LoadedModel
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one scored day: ``(persistent, group)``, the queries the scoring app's deferred step
    flags (:func:`~workbench.analysis.deferred.deferred_flags`, with the version's spread clip), so
    the evaluation counts the alerts the pipeline raises, not only the per-query detector's."""
    from workbench.analysis.deferred import split_reasons

    return split_reasons(deferred_alert_reasons(table, out, model))


def deferred_alert_reasons(table: pa.Table, out: dict[str, np.ndarray], model: LoadedModel) -> np.ndarray:
    """Per row of one scored day: the reason the scoring app's deferred step flags it with, None where it
    flags nothing (:func:`~workbench.analysis.deferred.deferred_reasons`, with the version's spread clip)."""
    from workbench.analysis.deferred import deferred_reasons
    from workbench.ml.features import REFERENCE_SOURCES

    source = REFERENCE_SOURCES[model.features.reference_source(table)]
    return deferred_reasons(table, out["pred_mean_ms"], out["pred_q_ms"], out["is_anomaly"],
                            source == "fingerprint", model.version, model.features.usual_wait(table),
                            scales={model.version: (model.detector.min_scale, model.detector.max_scale)},
                            usual_hours=model.usual_hours, homes=model.features.statement_homes(table),
                            unseen=source == "global")


def evaluate(settings: Settings, day: dt.date, version: str = "current", *, data: Path,
             store: bool = True, window_kinds: Sequence[str] = (), details: Path | None = None) -> dict[str, Any]:
    """Score one labelled day of ``data`` and return the metrics (also stored with the version).

    Parameters
    ----------
    settings : Settings
        Where the registry is (``settings.models_dir``).
    day : date
        UTC day of the log to score.
    version : str
        ``"current"``, a version id, or ``"baseline"`` (the earlier rules applied to the current
        version's predictions, ranks per instance over the day).
    data : Path
        Parquet query log with the label columns.
    store : bool
        Append the result to the version's ``evaluations.json``.
    window_kinds : sequence of str
        Kinds of ``data`` that are anomalous only together, judged at window level (besides the
        generator's and those the window-label sidecar names; see the module docstring).
    details : Path, optional
        A folder to write the day's verdicts to: ``queries.parquet`` (every query: its label, score, the
        detector's alert, the deferred step's reason, the evidence) and ``windows.parquet`` (every flagged
        window and signal, with its verdict: ``labelled``, ``explained`` by labelled queries, or ``false``).
        The result's ``details`` names the two files.
    """
    from workbench.data.generator import window_labels

    registry = ModelRegistry(settings.models_dir)
    use_baseline = version == "baseline"
    if details is not None:  # before the scoring: a folder that cannot be written fails in a second, not after it
        _details_folder(Path(details))
    resolved = registry.resolve(None if use_baseline else version)
    table = load_log_window(Path(data), day, 1)
    if table.num_rows == 0:
        from workbench.data.schema import validate

        span = validate(Path(data))
        msg = (f"{data} has no rows on {day}: its arrivals run from {span.first_arrival:%Y-%m-%d} to "
               f"{span.last_arrival:%Y-%m-%d}. Pick a day inside it (--day).")
        raise MLError(msg)
    if "label_anomaly" not in table.column_names:
        msg = (f"{data} has no label_anomaly column, so its alerts cannot be scored against labels; "
               "`workbench generate` writes a labelled log.")
        raise UnlabelledDay(msg)
    if _unlabelled_rows(table.column("label_anomaly")) == table.num_rows:
        # a labelled log merged with an unlabelled one, a folder whose day's file has no labels: every
        # alert of the day counted false and a PR-AUC of nothing stored with the version (tester, 40th session)
        msg = (f"Column 'label_anomaly' of {str(data)!r} is NULL on all {table.num_rows:,} rows of {day}: that "
               "day carries no labels to score its alerts against (label anomalies true, normal rows false or NULL). "
               "Its alerts alone: `workbench evaluate` prints them for such a day, alert_report() from Python.")
        raise UnlabelledDay(msg)
    sidecar = window_labels(Path(data))  # read once, before any scoring: the window kinds and metrics use it
    model = LoadedModel.load(registry, resolved)
    out = model.predict(table)
    labels = anomaly_labels(table, data)
    kinds = anomaly_kinds(table, labels, Path(data))
    present = {str(k) for k in kinds[labels] if k is not None}
    absent = [k for k in window_kinds if k not in present]
    if absent:  # a typo, or a kind with no episode that day: either way the user should know
        logger.warning("--window-kinds names %s, which no labelled row of %s has (its kinds: %s)",
                       ", ".join(map(repr, absent)), day, ", ".join(sorted(present)) or "none")
    window_kinds = window_kinds_of(Path(data), window_kinds, sidecar=sidecar)
    collective = labels & np.isin(kinds, list(window_kinds))
    exec_ms = numbers(table, "execution_duration_ms")  # NaN where NULL: no runtime to compare the models with
    b_score, b_alert, _ = baseline_for_table(table, out)
    q = ~collective  # per-query metrics: rows of window kinds are neither positives nor negatives
    score, first_alert = (b_score, b_alert) if use_baseline else (out["score"], out["is_anomaly"])
    reasons = np.full(table.num_rows, None, dtype=object) if use_baseline else deferred_alert_reasons(table, out, model)
    flagged: pd.DataFrame | None = None  # the flagged windows, when the day has window kinds
    alert = first_alert | (reasons != None)  # noqa: E711 (elementwise over an object array)
    metrics = detection_metrics(labels[q], score[q], alert[q], kinds[q])
    for kind in sorted(set(kinds[collective])):
        metrics[f"recall[{kind}] (per query)"] = float(alert[kinds == kind].mean())
    if not use_baseline:
        for name, rule in deferred_metric_reasons().items():
            metrics[name] = float((np.isin(reasons, rule) & q).sum())
        k_base = int(b_alert[q].sum())
        metrics["F1 @ baseline volume"] = top_k_f1(labels[q], out["score"][q], k_base)
        metrics["baseline F1"] = float(f1_score(labels[q], b_alert[q], zero_division=0.0))
        metrics["baseline alerts"] = float(k_base)
        metrics.update(recall_at_volume(labels[q], out["score"][q], kinds[q], k_base, b_alert[q]))
        if collective.any() or window_labels_exist(data):
            judged, flagged = _window_judgement(Path(data), day, window_kinds=sorted(window_kinds), sidecar=sidecar,
                                                history_cache=settings.window_history_dir, model=model,
                                                registry=registry)
            metrics.update(judged)
    elif collective.any() or window_labels_exist(data):
        # The earlier rules judge single queries: they flag no window (blind test, 37th session: the
        # baseline printed no window figure, where the README's table reads its window recall as 0).
        labels = labelled_windows(Path(data), table, day, window_kinds, sidecar=sidecar)
        metrics["windows flagged"] = 0.0
        metrics.update({f"window recall[{kind}]": 0.0 for kind in sorted(set(labels["kind"]))})
    y_log = np.log1p(np.clip(exec_ms, 0, None))
    metrics.update(regression_metrics(y_log, out["mean_log"], out["q_log"]))
    result = {"day": day.isoformat(), "detector": "baseline" if use_baseline else "residual",
              "version": resolved, "data": str(data), "metrics": metrics,
              "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if details is not None:
        result["details"] = write_details(Path(details), _query_details(
            table, labels, kinds, q, score, first_alert, reasons, alert, None if use_baseline else out),
            flagged)
    if store:
        registry.add_evaluation(resolved, result)
    logger.info("evaluation day=%s version=%s detector=%s PR-AUC=%.3f F1=%.3f", day, resolved,
                result["detector"], metrics["PR-AUC"], metrics["F1"])
    return result
