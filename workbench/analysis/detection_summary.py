"""How the detector's alerts agree with a generated log's labels, and model versions side by side.

Notebook-facing helpers over :mod:`workbench.ml.evaluate` (whose public functions compute the
metrics): precision and recall of the lakehouse alerts against ``label_anomaly``, recall per
``label_kind``, the evaluation table of several versions, their precision-recall curves and the
queries on which two versions disagree.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis._selection import asked, first_of
from workbench.config import Settings

__all__ = [
    "EVALUATION_KEYS",
    "LabelAgreement",
    "ScoredDay",
    "choose_versions",
    "comparison_skipped",
    "deferred_alerts_note",
    "disagreements",
    "empty_selection_note",
    "evaluation_day",
    "evaluation_table",
    "in_sample_note",
    "label_agreement",
    "last_log_day",
    "log_days",
    "model_metadata",
    "score_day",
    "trained_on",
]

logger = logging.getLogger(__name__)

#: Rows of the evaluation table, in order (``recall[<kind>]`` rows follow).
EVALUATION_KEYS: tuple[str, ...] = ("rows", "anomalies", "alerts", "PR-AUC", "F1", "precision", "recall",
                                    "alerts per 10k", "MAE(log)", "q90 coverage")
_COUNT_KEYS: tuple[str, ...] = ("rows", "anomalies", "alerts")
_LABEL_COLUMNS = ["instance_id", "query_id", "arrival_timestamp", "label_anomaly", "label_kind"]


@dataclass(frozen=True)
class LabelAgreement:
    """Alerts against labels over one span: totals and recall per label kind."""

    summary: pd.DataFrame  # one "value" column: log, counts, precision, recall
    per_kind: pd.DataFrame  # index label_kind: labelled, alerted, recall
    precision: float | None
    recall: float | None
    #: Why some labels of the span were not counted (not scored yet), or "".
    note: str = ""

    @property
    def labelled(self) -> int:
        """Labelled anomalies the comparison counts (over every kind)."""
        return int(self.per_kind["labelled"].sum()) if "labelled" in self.per_kind else 0


def label_agreement(anomalies: pd.DataFrame, labels_file: Path, *, start: datetime | None = None,
                    end: datetime | None = None, instances: Sequence[int] | None = None,
                    scored: pd.DataFrame | None = None) -> LabelAgreement:
    """Precision (alerts that are labelled anomalies) and recall (labelled anomalies that alerted).

    Parameters
    ----------
    anomalies : DataFrame
        Lakehouse anomaly rows (``instance_id``, ``query_id``, ``reason``); duplicates per query
        (several model versions) count once.
    labels_file : Path
        A generated Parquet log with ``label_anomaly`` and ``label_kind``.
    start, end, instances : optional
        The span the alerts were read for: labels outside it are not counted as missed.
    scored : DataFrame, optional
        ``(instance_id, query_id)`` of the queries a model scored
        (:func:`~workbench.analysis.anomaly_summary.scored_queries`): the others are left out, as no
        detector has seen them yet (the first day, or scoring behind the replay), and so are those its
        ``in_sample`` column marks, with their alerts; None: every query and alert counts.
    """
    from workbench.ml.evaluate import anomaly_kinds, anomaly_labels, require_labels

    require_labels(Path(labels_file))
    table = _read_labels(Path(labels_file))
    log = table.to_pandas()
    log["label_anomaly"] = labels = anomaly_labels(table, Path(labels_file))
    log["label_kind"] = anomaly_kinds(table, labels)  # "unnamed" where a tool labels without kinds
    if start is not None:
        log = log[log["arrival_timestamp"] >= start]
    if end is not None:
        log = log[log["arrival_timestamp"] < end]
    if instances:
        log = log[log["instance_id"].isin(list(instances))]
    in_span, unscored_labels, notes = len(log), 0, []
    alerts = anomalies.drop_duplicates(["instance_id", "query_id"])[["instance_id", "query_id", "reason"]]
    alerts = alerts.astype({"instance_id": "int64", "query_id": "int64"})
    in_sample = 0
    if scored is not None:
        seen = _among(log, scored)
        unscored_labels = int(log["label_anomaly"].astype(bool)[~seen].sum())
        log = log[seen]
        if not len(log) and in_span:
            notes.append(f"none of the span's {in_span:,} queries is scored yet (no model covers their day yet, or "
                         "scoring is behind the replay): precision and recall come once a model has scored some; "
                         f"the span's {unscored_labels:,} labelled anomalies are not counted as missed")
        elif len(log) < in_span:
            notes.append(f"{in_span - len(log):,} of the span's {in_span:,} queries are not scored yet (no model "
                         f"covers their day yet, or scoring is behind the replay); their {unscored_labels:,} labelled "
                         "anomalies are left out, not counted as missed")
        if "in_sample" in scored and scored["in_sample"].any():
            # Scored by a version trained on their own day: it fitted them, anomalies included.
            inside = scored[scored["in_sample"].astype(bool)]
            mark = _among(log, inside)
            in_sample = int(mark.sum())
            log, alerts = log[~mark], alerts[~_among(alerts, inside)]
            if in_sample:
                notes.append(f"{in_sample:,} queries scored by a version trained on their own day (the first day's, "
                             "in-sample) are left out with their alerts: those figures would flatter the detector")
    note = "; ".join(notes)
    labelled = log[log["label_anomaly"].astype(bool)]
    joined = alerts.merge(log[["instance_id", "query_id", "label_anomaly"]], on=["instance_id", "query_id"],
                          how="left")
    hits = int(joined["label_anomaly"].astype("boolean").fillna(False).sum())
    precision = round(hits / len(alerts), 3) if len(alerts) else None
    recall = round(hits / len(labelled), 3) if len(labelled) else None
    counts = {"labelled log": labels_file.name, "queries in span": in_span}
    if scored is not None:
        counts |= {"queries scored": len(log) + in_sample, "labelled anomalies not scored yet": unscored_labels}
        if in_sample:
            counts |= {"queries left out as in-sample": in_sample}
    summary = pd.DataFrame({"value": {
        **counts, "labelled anomalies": len(labelled),
        "alerts": len(alerts), "alerts that are labelled": hits, "precision": precision, "recall": recall}})
    found = labelled.merge(alerts, on=["instance_id", "query_id"], how="left", indicator=True)
    per_kind = (found.assign(alerted=found["_merge"] == "both").groupby("label_kind")["alerted"]
                .agg(["size", "sum", "mean"])
                .rename(columns={"size": "labelled", "sum": "alerted", "mean": "recall"}).round(3))
    return LabelAgreement(summary=summary, per_kind=per_kind, precision=precision, recall=recall, note=note)


def _among(frame: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Per row of ``frame``: whether its ``(instance_id, query_id)`` is one of ``keys``'."""
    wanted = keys[["instance_id", "query_id"]].drop_duplicates().astype("int64")
    joined = frame.merge(wanted, on=["instance_id", "query_id"], how="left", indicator=True)
    return joined["_merge"].eq("both").to_numpy()


def _read_labels(labels_file: Path) -> Any:
    """The key, time and label columns of a labelled log as every reader of a log reads them
    (``schema.open_parquet``: INT96 times in microseconds, so a year outside 1677..2262 is not wrapped
    around), ``arrival_timestamp`` in UTC (a naive one holds UTC wall times, as Redset's files do),
    ``label_kind`` as text (``schema.kind_names``: a code 3 or 3.0 is kind "3")."""
    import pyarrow as pa

    from workbench.data.schema import kind_names, open_parquet

    file = open_parquet(labels_file)
    present = [c for c in _LABEL_COLUMNS if c in file.schema_arrow.names]
    table = file.read(columns=present)
    if "arrival_timestamp" in present:
        arrivals = table.column("arrival_timestamp")
        if pa.types.is_timestamp(arrivals.type) and arrivals.type.tz is None:
            arrivals = arrivals.cast(pa.timestamp(arrivals.type.unit, tz="UTC"))
        table = table.set_column(present.index("arrival_timestamp"), "arrival_timestamp", arrivals)
    if "label_kind" in present:
        table = table.set_column(present.index("label_kind"), "label_kind",
                                 kind_names(table.column("label_kind"), labels_file))
    return table


def last_log_day(labels_file: Path) -> dt.date:
    """The UTC day of the newest arrival in a Parquet log."""
    return log_days(labels_file)[-1]


def log_days(labels_file: Path) -> list[dt.date]:
    """The UTC days that hold at least one arrival of a Parquet log, in order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from workbench.data.schema import open_parquet

    arrivals = open_parquet(labels_file).read(columns=["arrival_timestamp"]).column("arrival_timestamp")
    if pa.types.is_timestamp(arrivals.type) and arrivals.type.tz is not None:
        # Dropping the zone keeps the UTC wall time; a zoned cast to date32 would take the local day.
        arrivals = arrivals.cast(pa.timestamp(arrivals.type.unit))
    return sorted(pc.unique(pc.cast(arrivals, pa.date32())).drop_null().to_pylist())


def evaluation_day(labels_file: Path, day: str = "") -> tuple[dt.date | None, str]:
    """The day to evaluate on and a line saying so, or None and why not (a notebook prints the line).

    ``day`` empty means the log's last day. A day that is not a date, or on which the log has no
    rows, is not an error to stop a report for: the evaluation is skipped and the line names the
    log's days, so the user can pick one.
    """
    days = log_days(labels_file)
    if not days:
        return None, f"{labels_file} has no rows: evaluation skipped"
    span = f"{days[0]} to {days[-1]}" if len(days) > 1 else f"{days[0]}"
    if not day.strip():
        return days[-1], f"evaluation day: {days[-1]} (the log's last day)"
    try:
        wanted = dt.date.fromisoformat(day.strip())
    except ValueError:
        return None, f"day {day!r} is not a date (YYYY-MM-DD): evaluation skipped; the log {labels_file} covers {span}"
    if wanted not in days:
        return None, (f"day {wanted} has no rows in the log {labels_file} (it covers {span}): evaluation skipped; "
                      "set day to one of its days")
    return wanted, f"evaluation day: {wanted}"


def trained_on(settings: Settings, day: dt.date | str | None, versions: Sequence[str]) -> list[str]:
    """The ``versions`` whose training window holds ``day`` (their figures there are in-sample); a version
    deleted or damaged since counts as not (its window is unknown)."""
    from workbench.ml import ModelRegistry

    if day is None:
        return []
    registry = ModelRegistry(settings.models_dir)
    return [v for v in versions if str(day) in _info_or_empty(registry, v).get("window_days", [])]


def in_sample_note(settings: Settings, day: dt.date | None, versions: Sequence[str]) -> str:
    """A warning when ``day`` lies inside a compared version's training window ("" when none does).

    Such a version has seen that day's queries (and its anomalies) while fitting: its figures there are
    in-sample, better than it would do on a day it has not seen, and not comparable with the others'.
    """
    inside = trained_on(settings, day, versions)
    if not inside:
        return ""
    one = len(inside) == 1
    return (f"note: {day} is one of the days {', '.join(inside)} {'was' if one else 'were'} trained on, so "
            f"{'its' if one else 'their'} figures there are in-sample (better than on an unseen day) and not "
            "comparable with a version that has not seen it; pick a later day (`day`) to compare them fairly")


def evaluation_skipped(labels_file: Path | None, versions: Sequence[str]) -> str | None:
    """Why a model comparison cannot evaluate (naming what is missing and how to get it), or None."""
    if labels_file is None and not versions:
        return ("no labelled log and no model version yet: evaluation skipped (a labelled log comes from "
                "`workbench generate`; a version from the scoring app once the stream passes a day's end)")
    if labels_file is None:
        return ("no labelled log: evaluation skipped (set labels_path, or put a log with label_anomaly in "
                "WORKBENCH_HOME/data; `workbench generate` writes one)")
    if not versions:
        return ("no model version yet: evaluation skipped (the scoring app trains one once the stream passes a "
                "day's end; a log that ends on its first day: `workbench train --day D`)")
    return None


def comparison_skipped(versions: Sequence[str], scored: ScoredDay | None) -> str:
    """Why notebook 03 shows no disagreement table, naming the cause the user can change.

    It said "fewer than two versions with labelled data" for every cause, also with two versions
    chosen and only the evaluation skipped (a day outside the log, no labelled log).
    """
    if len(versions) < 2:
        chosen = f"only {versions[0]}" if versions else "none"
        return (f"fewer than two model versions to compare ({chosen}): nothing to compare; "
                "leave `versions` empty for all registered ones, or name two")
    if scored is None:
        return "no evaluation (see above): nothing to compare"
    return "fewer than two versions with labelled data: nothing to compare"


def choose_versions(settings: Settings, wanted: Sequence[str] = ()) -> list[str]:
    """The registered versions among ``wanted`` (all registered when empty); unknown ones are warned about.

    Raises
    ------
    ConfigurationError
        When ``wanted`` names versions and none is registered: the notebook would otherwise go on
        with no version and say that no model version exists.
    """
    import warnings

    from workbench.exceptions import ConfigurationError
    from workbench.ml import ModelRegistry

    known = ModelRegistry(settings.models_dir).versions()
    missing = [v for v in wanted if v not in known]
    if missing and len(missing) == len(list(wanted)):
        msg = (f"The `versions` parameter names no registered model version: {', '.join(missing)}. "
               f"Registered: {', '.join(known) or 'none yet'}.")
        raise ConfigurationError(msg)
    if missing:
        warnings.warn(f"Unknown model versions {', '.join(missing)} ignored; registered: {', '.join(known)}",
                      stacklevel=2)
    return [v for v in wanted if v in known] if wanted else list(known)


def _info_or_empty(registry: Any, version: str) -> dict[str, Any]:
    """A version's ``model.json`` ({} when it is deleted or damaged since: the message names the file)."""
    from workbench.ml.exceptions import MLError

    try:
        return registry.info(version)
    except MLError as exc:
        logger.warning("model version %s cannot be read: %s", version, exc)
        return {}


def model_metadata(settings: Settings, versions: Sequence[str]) -> pd.DataFrame:
    """One row per version from its ``model.json``: training day and window, rows, holdout metrics."""
    from workbench.ml import ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    current = registry.current()
    rows = []
    for v in versions:
        info = _info_or_empty(registry, v)
        if not info:  # damaged since it was registered: listed, and said so (it raised for the whole table)
            rows.append({"version": v, "training day": "damaged model.json (see `workbench models show`)",
                         "current": v == current})
            continue
        hold = info.get("holdout_metrics", {})
        rows.append({"version": v, "training day": info.get("training_day"),
                     "window days": len(info.get("window_days", [])),
                     "trained rows": info.get("rows", {}).get("trained"), "parent": info.get("parent"),
                     "holdout MAE(log)": hold.get("MAE(log)"), "holdout q90 coverage": hold.get("q90 coverage"),
                     "holdout alert rate": hold.get("alert rate"), "current": v == current})
    return pd.DataFrame(rows).set_index("version") if rows else pd.DataFrame()


def evaluation_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Detector x metric table from ``{name: evaluate(...)["metrics"]}``, rounded to 4 digits; the
    counts (rows, anomalies, alerts) as whole numbers (they read "5457.0" beside the rates)."""
    keys = [*EVALUATION_KEYS, *sorted({k for m in results.values() for k in m if k.startswith("recall[")})]
    frame = pd.DataFrame({v: {k: m.get(k) for k in keys} for v, m in results.items()}).T
    frame = frame.astype(float).round(4)
    for column in _COUNT_KEYS:
        frame[column] = frame[column].round().astype("Int64")
    return frame


def deferred_alerts_note(settings: Settings, day: dt.date | None, results: dict[str, dict[str, Any]]) -> str:
    """Why the lakehouse holds fewer of ``day``'s alerts than the evaluation counts, or "".

    The evaluation's ``alerts`` include the day's deferred alerts (persistent and creeping runs, slower
    groups' queries, moved statements' runs), which the stream stores only once the day is settled: when
    events of a later day arrive, or the replay has sent the log's last row.
    """
    from workbench.analysis.read import judged_through
    from workbench.ml.evaluate import deferred_metric_reasons

    runs = {name: sum(int(m.get(metric) or 0) for metric in deferred_metric_reasons()) for name, m in results.items()}
    runs = {name: n for name, n in runs.items() if n}
    if day is None or not runs or judged_through(settings, day):
        return ""
    counts = ", ".join(f"{name} {n:,}" for name, n in runs.items())
    return (f"The alerts above include {day}'s persistent and creeping runs, slower groups' queries and moved "
            f"statements' runs ({counts}). The stream "
            f"stores those once {day} is "
            f"settled (events of a later day arrived, or the replay sent the log's last row), so the lakehouse "
            f"holds fewer of {day}'s alerts for now.")


@dataclass
class ScoredDay:
    """One labelled day scored by several versions (and the baseline rules)."""

    day: dt.date
    table: Any  # pyarrow.Table of the day
    labels: np.ndarray
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    baseline_score: np.ndarray | None = None

    def pr_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``name -> (precision, recall)`` for every version and the baseline."""
        from sklearn.metrics import precision_recall_curve

        curves = {}
        scores = {v: out["score"] for v, out in self.outputs.items()}
        if self.baseline_score is not None:
            scores["baseline"] = self.baseline_score
        for name, score in scores.items():
            p, r, _ = precision_recall_curve(self.labels, score)
            curves[name] = (p, r)
        return curves


def score_day(settings: Settings, labels_file: Path, day: dt.date, versions: Sequence[str]) -> ScoredDay:
    """Score one labelled day with each version, plus the baseline on the current version's predictions; a
    version's ``is_anomaly`` holds every alert it raises, its persistent runs' too (as ``evaluate`` counts)."""
    from workbench.ml import ModelRegistry
    from workbench.ml._train import load_log_window
    from workbench.ml.baseline import baseline_for_table
    from workbench.ml.scorer import LoadedModel

    registry = ModelRegistry(settings.models_dir)
    table = load_log_window(Path(labels_file), day, 1)
    import pyarrow as pa

    from workbench.ml.evaluate import anomaly_labels, require_labels

    require_labels(Path(labels_file))
    labels = anomaly_labels(table, Path(labels_file))
    if "label_kind" not in table.column_names:  # labels from a tool that does not name kinds
        table = table.append_column("label_kind", pa.nulls(table.num_rows, pa.string()))
    scored = ScoredDay(day=day, table=table, labels=labels)
    from workbench.ml.evaluate import deferred_alerts

    for v in versions:
        model = LoadedModel.load(registry, v)
        out = model.predict(table)
        # the alerts the pipeline raises, persistent runs too, as the metrics count them (the crosstab said
        # 93 where the metrics said 95 for one version and day: a browser tester's finding)
        persistent, group = deferred_alerts(table, out, model)
        out["is_anomaly"] = out["is_anomaly"] | persistent | group
        scored.outputs[v] = out
    if scored.outputs:
        cur = scored.outputs.get(registry.current() or "") or next(iter(scored.outputs.values()))
        scored.baseline_score, _, _ = baseline_for_table(table, cur)
    return scored


def disagreements(scored: ScoredDay, a: str, b: str, *, start: datetime | None = None,
                  end: datetime | None = None, instances: Sequence[int] | None = None) -> pd.DataFrame:
    """Every query of the day with both versions' alert and score (filter ``alert a != alert b``)."""
    t = scored.table
    frame = pd.DataFrame({
        "arrival_timestamp": t.column("arrival_timestamp").to_pandas(),
        "instance_id": t.column("instance_id").to_numpy(zero_copy_only=False),
        "query_id": t.column("query_id").to_numpy(zero_copy_only=False),
        "label": scored.labels, "kind": t.column("label_kind").to_pandas().fillna(""),  # "": not labelled
        f"alert {a}": scored.outputs[a]["is_anomaly"], f"alert {b}": scored.outputs[b]["is_anomaly"],
        f"score {a}": np.round(scored.outputs[a]["score"], 3), f"score {b}": np.round(scored.outputs[b]["score"], 3)})
    if start is not None:
        frame = frame[frame["arrival_timestamp"] >= start]
    if end is not None:
        frame = frame[frame["arrival_timestamp"] < end]
    if instances:
        frame = frame[frame["instance_id"].isin(list(instances))]
    return frame.reset_index(drop=True)


def empty_selection_note(scored: ScoredDay, frame: pd.DataFrame, *, start: datetime | None = None,
                         end: datetime | None = None, instances: Sequence[int] | None = None) -> str:
    """Why the disagreement table of a day is empty: the filters against what the day holds ("" when
    ``frame`` has rows). An instance id that is not in the log read as "0 of 0 queries" before."""
    if len(frame):
        return ""
    t = scored.table
    times = pd.to_datetime(t.column("arrival_timestamp").to_pandas(), utc=True)
    span = f"{times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M} UTC" if len(times) else "no time"
    return (f"no query matches the filters ({asked(start, end, instances)}): the day holds {t.num_rows:,} queries "
            f"of instances {first_of(sorted(set(t.column('instance_id').to_pylist()))) or 'none'}, {span}")
