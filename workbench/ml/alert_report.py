"""What the detector does on an unlabelled log: alert volume, reasons and scores per instance.

Real Redset logs (and exports of Redshift's system tables) carry no anomaly labels, so precision
and recall cannot be computed. This report says what can be said without them: how many queries
each instance would alert on, why (the reason the detector names), and how the scores are
distributed, so a user can judge whether the alert volume is workable before running the stream.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.config import Settings
from workbench.ml._train import load_log_window
from workbench.ml.exceptions import MLError
from workbench.ml.registry import ModelRegistry

__all__ = ["alert_report", "format_alert_report", "has_labels"]

LABELS_NOTE = ("precision and recall need labels (a label_anomaly column, as in `workbench generate` output); "
               "this log or day has none, so this is the alert volume, reasons and scores only")


def has_labels(path: str | os.PathLike[str]) -> bool:
    """Whether the log (file or folder of files) has the ``label_anomaly`` column, in any of its files (a folder
    whose first file had none read as unlabelled on its labelled days; tester, 40th session)."""
    path = Path(path).expanduser()
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_"))) if path.is_dir() else [path]
    for file in files:
        try:
            if "label_anomaly" in pq.read_schema(file).names:
                return True
        except (OSError, pa.ArrowException):
            continue  # the readers name an unreadable file
    return False


def _quantiles(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p99 = np.quantile(finite, [0.5, 0.9, 0.99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(finite.max())}


def alert_report(settings: Settings, day: dt.date, version: str = "current", *, data: Path,
                 window_days: int = 1) -> dict[str, Any]:
    """Score the days ``[day - window_days + 1, day]`` of an unlabelled log; report alerts per instance.

    Parameters
    ----------
    settings : Settings
        Where the model registry is.
    day : date
        Last UTC day to score.
    version : str
        ``"current"``, a version id, or ``"baseline"`` (the earlier rules over the current
        version's predictions).
    data : Path
        The query log (file or folder); labels are not needed and not read.

    Returns
    -------
    dict
        ``rows``, ``alerts``, ``alerts per 10k``, ``of them deferred``, ``reasons`` (reason -> count),
        ``score`` quantiles, ``instances`` (one dict per instance with the same fields) and ``note``. The
        alerts are those the pipeline raises: the per-query detector's and, for the detector (not the
        baseline), the queries the scoring app's deferred step flags on each settled day (a statement
        that stays slower, a user, database or query type that runs slower or waits longer).
    """
    from workbench.ml.baseline import baseline_for_table
    from workbench.ml.scorer import LoadedModel

    registry = ModelRegistry(settings.models_dir)
    use_baseline = version == "baseline"
    resolved = registry.resolve(None if use_baseline else version)
    table = load_log_window(Path(data), day, window_days)
    if table.num_rows == 0:
        msg = (f"{data} has no rows on {day} (window {window_days} day(s)). Pick a day inside the log; "
               "`workbench validate` prints its span.")
        raise MLError(msg)
    model = LoadedModel.load(registry, resolved)
    out = model.predict(table)
    instance = table.column("instance_id").to_numpy(zero_copy_only=False)
    if use_baseline:
        score, alert, reason = baseline_for_table(table, out)
    else:
        score, alert, reason = out["score"], out["is_anomaly"], out.get("reason")
    score = np.asarray(score, dtype=np.float64)
    alert = np.asarray(alert, dtype=bool)
    reason = (np.full(len(alert), "alert", dtype=object) if reason is None
              else np.asarray(reason, dtype=object).copy())
    deferred = np.zeros(len(alert), dtype=bool)
    if not use_baseline:
        # the scoring app's deferred step flags these a settled day later: without them the report showed
        # about half the alerts the stream raises (tester, 40th session: 412 where the stream wrote 812)
        later = _deferred_reasons_by_day(table, out, model)
        deferred = (later != None) & ~alert  # noqa: E711 (elementwise over an object array)
        reason[deferred] = later[deferred]
        alert = alert | deferred

    def summary(mask: np.ndarray) -> dict[str, Any]:
        rows = int(mask.sum())
        alerts = int((alert & mask).sum())
        names, counts = np.unique(reason[alert & mask].astype(str), return_counts=True)
        return {"rows": rows, "alerts": alerts, "alerts per 10k": 1e4 * alerts / rows if rows else 0.0,
                "of them deferred": int((deferred & mask).sum()),
                "reasons": dict(sorted(zip(names.tolist(), counts.tolist(), strict=True),
                                       key=lambda item: (-item[1], item[0]))),
                "score": _quantiles(score[mask])}

    everything = np.ones(len(alert), dtype=bool)
    result = {"day": day.isoformat(), "window_days": window_days, "version": resolved,
              "detector": "baseline" if use_baseline else "residual", "data": str(data), **summary(everything),
              "instances": {int(i): summary(instance == i) for i in np.unique(instance)}, "note": LABELS_NOTE}
    return result


def _deferred_reasons_by_day(table: pa.Table, out: dict[str, np.ndarray], model: Any) -> np.ndarray:
    """The deferred step's reasons per row, each UTC day judged on its own as the scoring app judges a
    settled day."""
    from workbench.analysis._columns import arrival_us
    from workbench.ml.evaluate import deferred_alert_reasons

    reasons = np.full(table.num_rows, None, dtype=object)
    days = arrival_us(table) // 86_400_000_000
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        part = {name: np.asarray(values)[rows] for name, values in out.items()}
        reasons[rows] = deferred_alert_reasons(table.take(rows), part, model)
    return reasons


def format_alert_report(report: dict[str, Any], *, top: int = 3) -> str:
    """The report as a compact table: one line per instance, then the fleet."""
    lines = [f"day {report['day']}  version {report['version']}  detector {report['detector']}  (no labels)",
             f"{'instance':>10} {'rows':>9} {'alerts':>7} {'later':>6} {'per 10k':>8} {'score p50':>9} {'p90':>7} "
             f"{'p99':>7} {'max':>7}  top reasons"]

    def line(name: str, item: dict[str, Any]) -> str:
        s = item["score"]
        reasons = ", ".join(f"{r} {n}" for r, n in list(item["reasons"].items())[:top]) or "-"
        return (f"{name:>10} {item['rows']:>9,} {item['alerts']:>7,} {item['of them deferred']:>6,} "
                f"{item['alerts per 10k']:>8.1f} "
                f"{s['p50']:>9.2f} {s['p90']:>7.2f} {s['p99']:>7.2f} {s['max']:>7.2f}  {reasons}")

    lines += [line(str(instance), item) for instance, item in report["instances"].items()]
    lines.append(line("all", report))
    lines.append(f"note: {report['note']}")
    if report["detector"] != "baseline":
        lines.append("later: of the alerts, those the scoring app's deferred step raises once the day has settled "
                     "(a statement that stays slower or creeps, a user, database or query type slower or waiting "
                     "longer, another instance's statements)")
    return "\n".join(lines)
