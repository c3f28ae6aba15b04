"""The runtime-residual windows of a log's days as the scoring app stores them, rebuilt offline.

Two window signals, ``runtime_residual`` and ``beyond_tolerance_share``
(:mod:`workbench.analysis.residual_windows`), judge a window's queries against the model's own
expectation for each. Their reference is the instance's earlier windows, each day scored by the
version the scoring app gives it (:mod:`workbench.ml.selection`): trained through the day before,
the log's first day by the first version. ``evaluate`` and the benchmarks judge a day's windows
offline, so they rebuild that history here: a version of the registry with that training day when
there is one (a home the pipeline ran on holds them all), otherwise one trained for the purpose in
a folder of the caller's (never the user's registry).

Not the evaluated version's in-sample scores of its own training days: those residuals spread 2-3x
less than the next day's (stress seed 0, instance 73: window MAD 0.05-0.06 on its training days,
0.15 on the evaluation day), which makes an ordinary window look significant.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from workbench.analysis.residual_windows import residual_windows
from workbench.ml._train import load_log_window, train_table
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel
from workbench.ml.selection import VersionWindow

__all__ = ["history_folder", "reference_residuals", "residuals_of", "with_residuals"]

logger = logging.getLogger(__name__)
#: Reference-version folders kept under a cache (the newest by use): one per log and code.
HISTORY_FOLDERS_KEPT = 6


def history_folder(cache: Path, data: Path) -> Path:
    """A folder of ``cache`` for the reference versions of ``data`` (:func:`reference_residuals`'s
    ``models_dir``), the same for the same log and the same workbench code, so a second ``evaluate`` of
    the log reuses the versions the first one trained (about 5-25 s a day of history each).

    The key is the log's files (resolved path, size and modification time of each) and the source of
    the installed ``workbench`` package: a log rewritten in place, or other code, gets a folder of its
    own. Older folders beyond :data:`HISTORY_FOLDERS_KEPT` are removed, least recently used first."""
    import workbench

    digest = hashlib.sha256()
    data = Path(data).resolve()
    files = sorted(data.rglob("*.parquet")) if data.is_dir() else [data]
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    package = Path(workbench.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    folder = cache / f"{data.stem}-{digest.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    folder.touch()  # its use is its modification time
    others = sorted((f for f in cache.iterdir() if f.is_dir() and f != folder), key=lambda f: f.stat().st_mtime)
    for stale in others[:max(0, len(others) - (HISTORY_FOLDERS_KEPT - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def residuals_of(model: LoadedModel, table: pa.Table) -> pd.DataFrame:
    """The runtime-residual windows of ``table`` (:func:`~workbench.analysis.residual_windows.residual_windows`,
    what the scoring app stores in ``window_residuals``) from ``model``'s own scores of it."""
    pred = model.predict(table)
    scored = table.append_column("pred_mean_ms", pa.array(pred["pred_mean_ms"], pa.float64())).append_column(
        "pred_q_ms", pa.array(pred["pred_q_ms"], pa.float64())).append_column(
        "model_version", pa.array(pred["model_version"], pa.string()))
    _, _, source = model.features.transform_with_evidence(table)
    return residual_windows(scored, known=source == 0).drop(columns="unscored_queries")


def _registered(registry: ModelRegistry | None, end: dt.date) -> str | None:
    """The newest version of ``registry`` trained through ``end``, or None."""
    if registry is None:
        return None
    found = []
    for version in registry.versions():
        try:
            window = VersionWindow.from_meta(version, registry.info(version))
        except Exception:  # a damaged or unreadable version: trained again below instead
            continue
        if window.end == end:
            found.append(window)
    return max(found).version if found else None


@contextlib.contextmanager
def _registry_quiet() -> Iterator[None]:
    """The registry's INFO lines off while a reference version is trained into its scratch folder: "current
    model advanced" read as if the home's current model had moved (blind test, 37th session)."""
    registry_logger = logging.getLogger(ModelRegistry.__module__)
    level = registry_logger.level
    registry_logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        registry_logger.setLevel(level)


def reference_residuals(data: Path, first: dt.date, last: dt.date, models_dir: Path, *,
                        registry: ModelRegistry | None = None, log_first: dt.date | None = None) -> pd.DataFrame:
    """The residual windows of the days ``first..last`` of ``data`` as the scoring app stores them: each
    day scored by the version trained through the day before (the log's first day, ``log_first``,
    default ``first``, by one trained through itself).

    ``registry``: versions to use where one has the right training day; the others are trained
    (7-day window, the default recipe) into ``models_dir``, one sub-folder per training day, and
    reused from there by a later call with the same folder. A day whose version cannot be trained
    (too few usable rows) is left out with a warning: its windows are judged without the residual
    signals, as the scoring app, which had no version for it either, judged them.
    """
    from workbench.ml.exceptions import UntrainableWindow

    log_first = first if log_first is None else log_first
    frames = []
    for k in range((last - first).days + 1):
        day = first + dt.timedelta(days=k)
        table = load_log_window(data, day, 1)
        if table.num_rows == 0:
            continue
        end = max(day - dt.timedelta(days=1), log_first)
        version = _registered(registry, end)
        if version is not None:
            model = LoadedModel.load(registry, version)  # type: ignore[arg-type]
        else:
            folder = models_dir / f"through-{end}"
            scratch = ModelRegistry(folder)
            if scratch.current() is None:
                logger.info("window history: training a reference version through %s (as the scoring app "
                            "scored %s)", end, day)
            try:
                with _registry_quiet():
                    version = scratch.current() or train_table(folder, load_log_window(data, end, 7), end,
                                                               window_days=7).version
            except UntrainableWindow as exc:
                logger.warning("window history: %s is left out of the residual signals' reference (%s)", day, exc)
                continue
            model = LoadedModel.load(scratch, version)
        frames.append(residuals_of(model, table))
    if not frames:
        return residual_windows(pa.table({})).drop(columns="unscored_queries")
    return pd.concat(frames, ignore_index=True)


def with_residuals(windows: pd.DataFrame, residuals: pd.DataFrame) -> pd.DataFrame:
    """``window_stats`` rows with the residual columns of the same windows (NaN where none)."""
    out = windows.assign(window_start=pd.to_datetime(windows["window_start"], utc=True).astype("datetime64[ms, UTC]"))
    return out.merge(residuals, on=["instance_id", "window_start"], how="left")
