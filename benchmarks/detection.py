"""Leave-one-kind-out detection benchmark: every kind judged with constants chosen without it.

Usage::

    python benchmarks/detection.py [--data FILE] [--days 4 --instances 16 --seed 0 --kinds all]

Generates a log (unless ``--data``), trains one version on all days but the last (``train_table``,
7-day window) and scores the last day. The development choices of the detector are the constants
it does not learn from data: the spread cap ``max_scale``, the scale of the absolute floors and the
target ``alert_rate`` (per query), and the collective ``z_threshold`` (per window). For each kind
K the benchmark picks, from a small grid, the constants that do best on the *other* kinds (the
largest worst-kind recall with at most 10 false alerts per 10k normal queries, ties by PR-AUC;
windows: the largest worst-kind window recall with window precision >= 0.8) and reports K under
those constants. So no number in the table was tuned on the kind it describes. Per-query alerts
include the runs the scoring app's persistence step flags (:mod:`workbench.analysis.persistence`:
a run completing a streak of a statement's elevated runs that day); its one constant, the streak
length ``persistence_runs``, is in the grid (the bar follows from it), and ties between constants
(no other kind needs them) go to the fewest false alerts.

A labelled log from another tool works the same way (``--data THEIRS``): every labelled kind gets
its row, the generator's first and then the others; a kind named in the log's window-label sidecar
(``LOG.windows.parquet``) or in ``--window-kinds KIND,...`` is judged per window (without a sidecar,
its windows are those holding at least 10 of its labelled rows), and labels may come without kinds
(``unnamed``) or as true/false text (:func:`workbench.ml.evaluate.anomaly_labels`).

Columns: recall of K (queries; for window kinds: windows), PR-AUC of K against normal rows,
false alerts per 10k normal queries (window kinds: window precision), the baseline's recall at the
detector's alert volume (its top-k scores; window kinds: windows holding a baseline alert), and
the constants chosen; a last query row gives all per-query kinds together under the default
constants (PR-AUC over every labelled per-query row). Baseline at equal volume for windows: the
windows with the most baseline alerts, as many as the detector flagged. Prints one table, then
for every miss the normal rows that dominate it, the normal rows scoring at least as high, and how
many normal rows near the bar are dominated by no other normal row (see ``_miss_lines``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score

from workbench.analysis.collective import (
    CollectiveParams,
    score_window_runs,
    window_score,
    windows_of,
    with_silent_windows,
)
from workbench.analysis.deferred import deferred_flags as deferred_masks
from workbench.analysis.persistence import PersistenceParams
from workbench.analysis.residual_windows import RESIDUAL_SIGNAL
from workbench.data.generator import QUERY_KINDS, WINDOW_KINDS, generate
from workbench.ml._train import load_log_window, split_window, train_table
from workbench.ml.baseline import baseline_for_table
from workbench.ml.detector import COSTLY, FLOORS, ResidualDetector
from workbench.ml.evaluate import anomaly_kinds, anomaly_labels, dominating_normals, labelled_windows, window_kinds_of
from workbench.ml.features import REFERENCE_SOURCES, observed_signals
from workbench.ml.registry import ModelRegistry
from workbench.ml.residual_history import reference_residuals, residuals_of, with_residuals
from workbench.ml.scorer import LoadedModel

GRID = {"max_scale": (0.75, 1.0, 1.5), "floor_factor": (0.5, 1.0, 2.0), "alert_rate": (0.00025, 0.0005, 0.001),
        "persistence_runs": (3, 4, 5)}
Z_GRID = (3.0, 4.0, 5.0)
MAX_FALSE_PER_10K = 10.0
MIN_WINDOW_PRECISION = 0.8


def train_all_but_last(data: Path, days: int, models_dir: Path) -> tuple[LoadedModel, pa.Table, dt.date, dt.date]:
    """``(model, holdout table, train day, evaluation day)``: one version trained on every day of
    ``data`` but the last (7-day window). A registry in ``models_dir`` that already has a current
    version is reused (train once, probe many times: the version depends only on the log)."""
    first = pc.min(pq.read_table(data, columns=["arrival_timestamp"]).column("arrival_timestamp")).as_py()
    dates = sorted({d.date() for d in pd.date_range(first.date(), periods=days, freq="D")})
    train_day, eval_day = dates[-2], dates[-1]
    window = load_log_window(data, train_day, 7)
    registry = ModelRegistry(models_dir)
    version = registry.current() or train_table(models_dir, window, train_day, window_days=7).version
    _, hold_table, _ = split_window(window)
    return LoadedModel.load(registry, version), hold_table, train_day, eval_day


def _inputs(model: LoadedModel, table: pa.Table) -> dict:
    X, refs, source = model.features.transform_with_evidence(table)
    mean_log, q_log = model.regressors.predict_log(X)
    return {"obs": observed_signals(table), "mean": mean_log, "q": q_log, "refs": refs,
            "source": source, "usual_wait": model.features.usual_wait(table), "usual_hours": model.usual_hours,
            "homes": model.features.statement_homes(table)}


def holdout_inputs(model: LoadedModel, hold_table: pa.Table) -> dict:
    """:func:`_inputs` of the holdout, with key ``unseen``: those of the holdout re-read as a never-seen
    instance, which calibrate the global prior's group as training does."""
    return {**_inputs(model, hold_table), "unseen": _inputs(model, model.features.as_never_seen_instance(hold_table))}


def _rows(value: object, keep: np.ndarray) -> object:
    """``value`` (an array, or a dict / tuple of them, as in :func:`_inputs`) restricted to ``keep``."""
    if isinstance(value, dict):
        return {k: _rows(v, keep) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_rows(v, keep) for v in value)
    if value is None or isinstance(value, pd.DataFrame):  # per version, not per row (the usual hours)
        return value
    return value[keep]


def _detect(params: dict, hold: dict, day: dict) -> tuple[np.ndarray, np.ndarray]:
    det = ResidualDetector(alert_rate=params["alert_rate"], max_scale=params["max_scale"],
                           floors={k: v * params["floor_factor"] for k, v in FLOORS.items()}, costly=COSTLY)

    def parts(x: dict) -> tuple[dict, dict]:
        z = det.residuals(x["obs"], x["mean"], x["q"], x["refs"])
        return z, det.excess(x["obs"], det.expected(x["mean"], x["refs"]))

    unseen = hold.get("unseen")
    det.fit(*parts(hold), hold["source"], group_only=None if unseen is None else (*parts(unseen), unseen["source"]))
    score, alert, _ = det.decide(*parts(day), day["source"])
    return score, alert


def deferred_flags(table: pa.Table, day: dict, alert: np.ndarray, version: str,
                   params: PersistenceParams | None = None) -> np.ndarray:
    """Per row of ``table`` (one day): flagged by the scoring app's deferred step over the model's
    scores (``day``: :func:`_inputs`): :func:`~workbench.analysis.persistence.persistent_runs`, then
    :func:`~workbench.analysis.slower_groups.slower_group_runs` at its defaults (the window
    machinery's constants, chosen on no kind) on the rest, then
    :func:`~workbench.analysis.moved_statements.moved_statement_runs` and
    :func:`~workbench.analysis.instance_record.instance_record_runs` on what those left. Rows the detector
    alerted on, ``alert``, are not flagged again."""
    persistent, group = deferred_masks(table, np.expm1(np.clip(day["mean"], 0.0, 50.0)),
                                       np.expm1(np.clip(day["q"], 0.0, 50.0)), alert, day["source"] == 0, version,
                                       day["usual_wait"], persistence=params, usual_hours=day["usual_hours"],
                                       homes=day["homes"], unseen=REFERENCE_SOURCES[day["source"]] == "global")
    return persistent | group


def _miss_lines(rows: list[dict], runs: dict, labels: np.ndarray, kinds: np.ndarray, day: dict,
                default: tuple) -> list[str]:
    """Per kind with misses: the normal rows dominating each miss, those of them not alerted, and the
    normal rows scoring at least as high (what catching it by lowering the bar costs); last, how
    many normal rows near the bar are themselves dominated by no other normal row (the skyline: a
    miss dominated by none is only as unusual as they are)."""
    det = ResidualDetector()
    expected = det.expected(day["mean"], day["refs"])
    excess = det.excess(day["obs"], expected)
    log_ratio = {s: day["obs"][s] - np.log1p(expected[s]) for s in excess}
    own_history = day["source"] == 0
    lines = []
    for row in rows:
        if row["family"] != "query" or row["kind"] not in set(kinds):
            continue
        score, alert = runs[tuple(row["chosen"].values())]
        missed = np.flatnonzero((kinds == row["kind"]) & ~alert)
        if len(missed):
            every = dominating_normals(missed, ~labels, excess, log_ratio, own_history)
            quiet = dominating_normals(missed, ~labels & ~alert, excess, log_ratio, own_history)
            higher = [int((score[~labels] >= score[i]).sum()) for i in missed]
            lines.append(f"{row['kind']}: {len(missed)} missed; per miss, normal rows dominating it (not alerted) "
                         f"/ scoring at least as high: " + ", ".join(
                             f"{a} ({b}) / {c}" for a, b, c in zip(every, quiet, higher, strict=True)))
    score, alert = runs[default]
    near = np.flatnonzero(~labels & (score >= 0.5))
    alone = dominating_normals(near, ~labels, excess, log_ratio, own_history) == 1  # only by itself
    lines.append(f"skyline (default constants): of {len(near)} normal rows scoring >= 0.5, {int(alone.sum())} are "
                 f"dominated by no other normal row ({int((alone & ~alert[near]).sum())} of them not alerted)")
    return lines


def _in_order(kinds: np.ndarray, known: tuple[str, ...]) -> list[str]:
    """The distinct ``kinds``: the generator's ``known`` ones in their order, then any other (another tool's) sorted."""
    seen = {k for k in kinds if k is not None}
    return [k for k in known if k in seen] + sorted(seen - set(known))


def _query_table(labels: np.ndarray, kinds: np.ndarray, runs: dict, base_score: np.ndarray) -> list[dict]:
    present = _in_order(kinds[labels], QUERY_KINDS)
    normal = ~labels
    stats = {}
    for key, (score, alert) in runs.items():
        per = {k: float(alert[kinds == k].mean()) for k in present}
        false = float(alert[normal].mean() * 1e4)
        stats[key] = (per, false, score, alert)
    rows = []
    aucs: dict[tuple[int, str], float] = {}  # the persistence constants share the detector's scores
    for kind in present:
        others = [k for k in present if k != kind]
        best_key, best = None, None
        for key, (per, false, score, _) in stats.items():
            worst = min((per[k] for k in others), default=1.0)
            keep = ~np.isin(kinds, [kind])
            if (id(score), kind) not in aucs:
                aucs[id(score), kind] = (float(average_precision_score(labels[keep], score[keep]))
                                         if labels[keep].any() else 0.0)
            auc = aucs[id(score), kind]
            # ties (e.g. persistence constants no other kind needs) go to the fewest false alerts
            value = (false <= MAX_FALSE_PER_10K, worst if false <= MAX_FALSE_PER_10K else -false, auc, -false)
            if best is None or value > best:
                best_key, best = key, value
        per, false, score, alert = stats[best_key]
        sel = (kinds == kind) | normal
        k = int(alert.sum())
        top = np.zeros(len(alert), dtype=bool)
        top[np.argsort(-base_score, kind="stable")[:k]] = True
        rows.append({"kind": kind, "family": "query", "recall": per[kind],
                     "PR-AUC": float(average_precision_score(labels[sel], score[sel])),
                     "false/10k | win prec": false, "baseline recall": float(top[kinds == kind].mean()),
                     "chosen": dict(zip(GRID, best_key, strict=True))})
    return rows


def _residual_line(scored: pd.DataFrame, labels: pd.DataFrame, explained: set, z: float) -> str:
    """What the runtime-residual signal flags at ``z``: per kind, and the windows no label explains."""
    keys = {k: set(zip(g["instance_id"], g["window_start"], strict=True)) for k, g in labels.groupby("kind")}
    every = set().union(*keys.values()) if keys else set()
    score = window_score(scored, z)
    hit = scored[(score >= 1.0) & (scored["signal"] == RESIDUAL_SIGNAL)]
    others = scored[(score >= 1.0) & (scored["signal"] != RESIDUAL_SIGNAL)]
    flagged = set(zip(hit["instance_id"], hit["window_start"], strict=True))
    by_others = set(zip(others["instance_id"], others["window_start"], strict=True))
    unexplained = flagged - every - explained
    per_kind = ", ".join(f"{k} {len(flagged & v)}/{len(v)}" for k, v in keys.items())
    return (f"{RESIDUAL_SIGNAL} alone (z {z:g}): {len(flagged)} windows flagged; {per_kind}; unexplained "
            f"{len(unexplained)} ({len(unexplained - by_others)} of them flagged by no other signal)")


def _window_table(scored: pd.DataFrame, labels: pd.DataFrame, explained: set, base_counts: pd.Series) -> list[dict]:
    label_keys = {k: set(zip(g["instance_id"], g["window_start"], strict=True)) for k, g in labels.groupby("kind")}
    all_labels = set().union(*label_keys.values()) if label_keys else set()
    flagged_by_z = {}
    for z in Z_GRID:
        s = window_score(scored, z)
        hit = scored[s >= 1.0]
        flagged_by_z[z] = set(zip(hit["instance_id"], hit["window_start"], strict=True))
    rows = []
    for kind in _in_order(np.asarray(list(label_keys), dtype=object), WINDOW_KINDS):
        others = [k for k in label_keys if k != kind]
        best_z, best = None, None
        for z, flagged in flagged_by_z.items():
            other_labels = set().union(*(label_keys[k] for k in others)) if others else set()
            tp = len(flagged & other_labels)
            fp = len(flagged - all_labels - explained)
            prec = tp / (tp + fp) if tp + fp else 0.0
            worst = min((len(flagged & label_keys[k]) / len(label_keys[k]) for k in others), default=1.0)
            value = (prec >= MIN_WINDOW_PRECISION, worst if prec >= MIN_WINDOW_PRECISION else prec)
            if best is None or value > best:
                best_z, best = z, value
        flagged = flagged_by_z[best_z]
        base_windows = set(base_counts.sort_values(ascending=False, kind="stable").index[:len(flagged)])
        tp = len(flagged & all_labels)
        fp = len(flagged - all_labels - explained)
        recall = len(flagged & label_keys[kind]) / len(label_keys[kind])
        rows.append({"kind": kind, "family": "window", "recall": recall,
                     "PR-AUC": float("nan"), "false/10k | win prec": tp / (tp + fp) if tp + fp else float("nan"),
                     "baseline recall": len(base_windows & label_keys[kind]) / len(label_keys[kind]),
                     "chosen": {"z_threshold": best_z}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="all")
    parser.add_argument("--window-kinds", default="", metavar="KIND,...",
                        help="labelled kinds of --data that are anomalous only together (judged per window; "
                             "the generator's and those of a LOG.windows.parquet sidecar always are)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = args.data
        if data is None:
            data = Path(tmp) / "log.parquet"
            print(generate(data, days=args.days, instances=args.instances, seed=args.seed, kinds=args.kinds))
        model, hold_table, train_day, eval_day = train_all_but_last(data, args.days, Path(tmp) / "models")
        day_table = load_log_window(data, eval_day, 1)
        hold, day = holdout_inputs(model, hold_table), _inputs(model, day_table)
        labels = anomaly_labels(day_table, data)
        kinds = anomaly_kinds(day_table, labels)
        window_kinds = window_kinds_of(data, [k.strip() for k in args.window_kinds.split(",") if k.strip()])
        q = ~(labels & np.isin(kinds, list(window_kinds)))
        runs = {}
        detector_grid = {k: v for k, v in GRID.items() if k != "persistence_runs"}
        persistent = {}
        for combo in itertools.product(*detector_grid.values()):
            score, alert = _detect(dict(zip(detector_grid, combo, strict=True)), hold, day)
            for k in GRID["persistence_runs"]:
                if k not in persistent:  # the flags do not depend on the detector's constants (rows it
                    persistent[k] = deferred_flags(day_table, day, alert, model.version,  # alerted on
                                                      PersistenceParams(runs=k))  # are in the alert anyway)
                runs[(*combo, k)] = (score[q], (alert | persistent[k])[q])
        pred = model.predict(day_table)
        inst = day_table.column("instance_id").to_numpy(zero_copy_only=False)
        b_score, b_alert, _ = baseline_for_table(day_table, pred)
        rows = _query_table(labels[q], kinds[q], runs, b_score[q])
        default = (1.0, 1.0, 0.0005, PersistenceParams().runs)
        misses = _miss_lines(rows, runs, labels[q], kinds[q], {k: _rows(v, q) for k, v in day.items()}, default)
        d_score, d_alert = runs[default]
        k = int(d_alert.sum())
        top = np.zeros(len(d_alert), dtype=bool)
        top[np.argsort(-b_score[q], kind="stable")[:k]] = True
        rows.append({"kind": "ALL per-query kinds (defaults)", "family": "query",
                     "recall": float(d_alert[labels[q]].mean()),
                     "PR-AUC": float(average_precision_score(labels[q], d_score)),
                     "false/10k | win prec": float(d_alert[~labels[q]].mean() * 1e4),
                     "baseline recall": float(top[labels[q]].mean()), "chosen": dict(zip(GRID, default, strict=True))})

        wl = labelled_windows(data, day_table, eval_day, window_kinds)
        residual_line = ""
        if len(wl):
            start = pd.Timestamp(eval_day, tz="UTC")
            log = load_log_window(data, eval_day, 8)
            # the evaluation day by the evaluated version, the days before as the scoring app scored them
            first = eval_day - dt.timedelta(days=args.days - 1)
            residuals = pd.concat([reference_residuals(data, first, train_day, Path(tmp) / "by-day"),
                                   residuals_of(model, day_table)], ignore_index=True)
            windows = with_silent_windows(with_residuals(windows_of(log), residuals))
            today = windows[windows["window_start"] >= start]
            scored = score_window_runs(today, windows, CollectiveParams(z_threshold=1.0))
            ts = pd.to_datetime(day_table.column("arrival_timestamp").to_numpy(zero_copy_only=False), utc=True)
            floor10 = ts.floor("10min")
            label_keys = set(zip(wl["instance_id"], wl["window_start"], strict=True))
            explained = set(zip(inst[labels], floor10[labels], strict=True)) - label_keys
            base_counts = pd.Series(1, index=pd.MultiIndex.from_arrays([inst[b_alert], floor10[b_alert]])
                                    ).groupby(level=[0, 1]).sum()
            rows += _window_table(scored, wl, explained, base_counts)
            residual_line = _residual_line(scored, wl, explained, CollectiveParams().z_threshold)
        table = pd.DataFrame(rows)
        pd.set_option("display.width", 200)
        pd.set_option("display.max_colwidth", 80)
        print(f"train {train_day} (7-day window), evaluate {eval_day}; leave-one-kind-out; "
              f"{time.perf_counter() - t0:.0f} s")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("misses, the normal rows that dominate them (excess and ratio >= on every exceeded signal) "
              "and the normal rows scoring at least as high:")
        print("\n".join(misses) or "none")
        if residual_line:
            print(residual_line)


if __name__ == "__main__":
    main()
