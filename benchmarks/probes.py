"""Held-out probes: Redshift failure modes the generator does not make, injected into the last day of a log.

Usage::

    python benchmarks/probes.py --data FILE [--days 4] [--seed 0] [--models DIR]

``FILE`` is a log without stress kinds (the classic demo log: ``workbench generate --days 4
--instances 16 --seed 0``). The benchmark trains one version on every day but the last, as
``benchmarks/detection.py`` does (``--models DIR`` keeps it for the next run), applies every probe
of ``benchmarks._probes.PROBES`` to the last day (each on its own rows, instances and times; nothing else of the
day changes) and scores that day with the default detector. Probe rows are labelled with the probe's
name, collective probes also label every 10-minute window holding at least 10 affected queries.

The probes themselves, and how each picks its rows, are in ``benchmarks/_probes.py``.

Reported per probe: rows, instances (with their size initial), the detector's recall at its
default constants and the probe rows' median score (1 = the alert bar), the baseline's recall at
the detector's alert volume (its top-k scores); for collective probes the labelled windows flagged
by :mod:`workbench.analysis.collective` (default constants) and the signals that flagged them. Last,
the false alerts per 10k normal queries, the PR-AUC of every per-query label (the log's and the
point / contextual probes') against the normal rows, and the flagged windows that no probe touched
and no labelled query explains (and how many of those the unprobed day flags too). Misses of
per-query probes come with the median number of normal rows that dominate them
(:func:`~workbench.ml.evaluate.dominating_normals`: at least as much excess and ratio on every
exceeded signal), a lower bound on the false alerts any monotone score must add to catch them.

Column ``residual prototype``: the windows a mix-adjusted signal the product does not have would
flag (:func:`_residual_windows`: the median runtime residual of the window's executed queries
against the model's expectation, compared with the instance's windows of the training days), to size
what such a signal could add. The training days' residuals come from the same version (their
fingerprint history includes them); per instance their window medians sit within 0.1 of the
evaluation day's on the demo log, so the bias is small against the ``ln 1.4`` shift.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import average_precision_score

from benchmarks._probes import MIN_WINDOW_ROWS, PROBES, apply_probes
from benchmarks.detection import _detect, _inputs, train_all_but_last
from workbench.analysis.collective import score_windows, windows_of
from workbench.ml._train import load_log_window
from workbench.ml.baseline import baseline_decide
from workbench.ml.detector import ResidualDetector
from workbench.ml.evaluate import dominating_normals

DEFAULTS = {"max_scale": 1.0, "floor_factor": 1.0, "alert_rate": 0.0005}


# --- scoring ----------------------------------------------------------------------------------
def _window_keys(frame: pd.DataFrame) -> set:
    return set(zip(frame["instance_id"].astype(int), pd.to_datetime(frame["window_start"], utc=True), strict=True))


def _flagged_windows(day: pa.Table, history: pd.DataFrame) -> pd.DataFrame:
    """Each window of ``day`` with its best collective score and signal (default constants)."""
    today = windows_of(day)
    today["window_start"] = pd.to_datetime(today["window_start"], utc=True)
    scored = score_windows(today, pd.concat([history, today], ignore_index=True))
    return scored.sort_values("score", ascending=False).drop_duplicates(["instance_id", "window_start"])


def _query_rows(day: pa.Table, label: np.ndarray, inputs: dict, score: np.ndarray, alert: np.ndarray,
                sizes: dict[str, list[int]]) -> list[dict]:
    """Per probe: rows, instances (size class initial), recall, median score, the baseline's recall
    at the detector's alert volume, and per miss the normal rows that dominate it (median)."""
    logged = day.column("label_anomaly").to_numpy(zero_copy_only=False).astype(bool)
    normal = ~logged & pd.isna(label)
    exec_ms = pc.fill_null(day.column("execution_duration_ms"), 0).to_numpy(zero_copy_only=False)
    inst = day.column("instance_id").to_numpy(zero_copy_only=False)
    pred_mean, pred_q = (np.expm1(np.clip(inputs[k], 0.0, 50.0)) for k in ("mean", "q"))
    b_score, _, _ = baseline_decide(inst, exec_ms, pred_mean, pred_q)
    base_top = np.zeros(len(alert), dtype=bool)
    base_top[np.argsort(-b_score, kind="stable")[:int(alert.sum())]] = True
    det = ResidualDetector()
    expected = det.expected(inputs["mean"], inputs["refs"])
    excess = det.excess(inputs["obs"], expected)
    log_ratio = {s: inputs["obs"][s] - np.log1p(expected[s]) for s in excess}
    size_of = {i: name[0] for name, members in sizes.items() for i in members}
    rows = []
    for probe in PROBES:
        sel = label == probe.name
        row: dict = {"probe": probe.name, "family": probe.family, "rows": int(sel.sum())}
        if sel.any():
            missed = np.flatnonzero(sel & ~alert)
            dominated = dominating_normals(missed, normal, excess, log_ratio, inputs["source"] == 0) if (
                probe.family != "collective" and len(missed)) else np.array([])
            row |= {"instances": ",".join(f"{i}{size_of.get(i, '?')}" for i in sorted(set(inst[sel].tolist()))),
                    "recall": float(alert[sel].mean()), "median score": float(np.median(score[sel])),
                    "baseline recall": float(base_top[sel].mean()),
                    "misses dominated by": f"{np.median(dominated):.0f}" if len(dominated) else ""}
        rows.append(row)
    rows.append({"probe": "false alerts / 10k normal", "family": "",
                 "rows": int(normal.sum()), "recall": float(alert[normal].mean() * 1e4)})
    point = np.isin(label, [p.name for p in PROBES if p.family != "collective"]) | logged
    keep = point | normal
    rows.append({"probe": "PR-AUC point+contextual+log", "family": "", "rows": int(point.sum()),
                 "recall": float(average_precision_score(point[keep], score[keep]))})
    return rows


def _window_rows(original: pa.Table, day: pa.Table, label: np.ndarray, labelled: pd.DataFrame,
                 history: pa.Table, inputs: dict, history_residuals: pd.Series) -> tuple[dict[str, dict], str]:
    """Per collective probe: labelled windows flagged (and the signals that flagged them); and a
    line on the flagged windows no probe explains."""
    history_windows = windows_of(history)
    history_windows["window_start"] = pd.to_datetime(history_windows["window_start"], utc=True)
    hit = _flagged_windows(day, history_windows).query("score >= 1.0")
    before = _window_keys(_flagged_windows(original, history_windows).query("score >= 1.0"))
    inst = day.column("instance_id").to_numpy(zero_copy_only=False)
    ts = pd.to_datetime(day.column("arrival_timestamp").to_numpy(zero_copy_only=False), utc=True).floor("10min")
    family = {p.name: p.family for p in PROBES}
    in_episode = np.array([family.get(x) == "collective" for x in label])
    touched = set(zip(inst[in_episode], ts[in_episode], strict=True))
    # windows holding a labelled per-query anomaly (the log's, or a point / contextual probe's)
    per_query = ~in_episode & (day.column("label_anomaly").to_numpy(zero_copy_only=False) | ~pd.isna(label))
    explained = set(zip(inst[per_query], ts[per_query], strict=True))
    residual = _residual_windows(_residual_medians(day, inputs), history_residuals)
    out = {}
    for name, group in labelled.groupby("probe"):
        keys = _window_keys(group)
        found = hit[[k in keys for k in _window_keys_list(hit)]]
        out[str(name)] = {"windows": f"{len(found)}/{len(keys)}",
                          "top signals": ",".join(sorted(set(found["signal"]))) or "-",
                          "residual prototype": f"{len(keys & residual)}/{len(keys)}"}
    hit_keys = _window_keys(hit)
    unlabelled = hit_keys - _window_keys(labelled) - touched - explained
    line = (f"flagged windows no probe touched and no labelled query explains: {len(unlabelled)} "
            f"({len(unlabelled & before)} of them flagged on the unprobed day too; unprobed day: "
            f"{len(before - explained)}); flagged windows with fewer than {MIN_WINDOW_ROWS} queries of an "
            f"episode: {len((hit_keys & touched) - _window_keys(labelled))}. Residual prototype: "
            f"{len(residual - _window_keys(labelled) - touched - explained)} such windows")
    return out, line


#: Prototype of a mix-adjusted window signal (not the product's): the median over a window's executed
#: queries of their runtime residual (log runtime - the model's expected log runtime), against the same
#: medians of the instance's windows in the training days (robust z, MAD floored at 0.05). Hand-set
#: constants, to size what such a signal could add.
RESIDUAL_Z, RESIDUAL_SHIFT, RESIDUAL_MIN_QUERIES, RESIDUAL_MIN_REFERENCE = 4.0, float(np.log(1.4)), 20, 36


def _residual_medians(table: pa.Table, inputs: dict) -> pd.Series:
    """Median runtime residual per (instance, window) over its executed queries (>= RESIDUAL_MIN_QUERIES)."""
    frame = pd.DataFrame({
        "instance_id": table.column("instance_id").to_numpy(zero_copy_only=False),
        "window_start": pd.to_datetime(table.column("arrival_timestamp").to_numpy(zero_copy_only=False),
                                       utc=True).floor("10min"),
        "residual": inputs["obs"]["exec"] - inputs["mean"]})
    executed = ~pc.fill_null(table.column("was_cached"), False).to_numpy(zero_copy_only=False)
    executed &= ~pc.fill_null(table.column("was_aborted"), False).to_numpy(zero_copy_only=False)
    executed &= pc.fill_null(table.column("execution_duration_ms"), 0).to_numpy(zero_copy_only=False) > 0
    per = frame[executed].groupby(["instance_id", "window_start"])["residual"].agg(["size", "median"])
    return per.loc[per["size"] >= RESIDUAL_MIN_QUERIES, "median"]


def _residual_windows(day: pd.Series, history: pd.Series) -> set:
    """Windows of ``day`` (:func:`_residual_medians`) the prototype flags against ``history``'s: every
    query of the window slower than the model expects, by a shift the instance's earlier windows do not show."""
    flagged = set()
    for (inst, start), median in day.items():
        ref = history.loc[inst].to_numpy() if inst in history.index.get_level_values(0) else np.array([])
        if len(ref) < RESIDUAL_MIN_REFERENCE:
            continue
        center = np.median(ref)
        spread = max(1.4826 * np.median(np.abs(ref - center)), 0.05)
        if median - center >= RESIDUAL_SHIFT and (median - center) / spread >= RESIDUAL_Z:
            flagged.add((int(inst), start))
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, help="registry to reuse (trained there on the first run)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, hold_table, train_day, eval_day = train_all_but_last(args.data, args.days, args.models or Path(tmp))
        history = load_log_window(args.data, train_day, 7)
        original = load_log_window(args.data, eval_day, 1)
        day, label, labelled, sizes = apply_probes(original, history, args.seed)
        hold, inputs = _inputs(model, hold_table), _inputs(model, day)
        score, alert = _detect(DEFAULTS, hold, inputs)
        history_residuals = _residual_medians(history, _inputs(model, history))
    rows = _query_rows(day, label, inputs, score, alert, sizes)
    windows, line = _window_rows(original, day, label, labelled, history, inputs, history_residuals)
    table = pd.DataFrame([r | windows.get(r["probe"], {}) for r in rows])
    pd.set_option("display.width", 250)
    print(f"train {train_day} (7-day window), probe and evaluate {eval_day}; seed {args.seed}; "
          f"{time.perf_counter() - t0:.0f} s; detector alerts {int(alert.sum())}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    print(line)


def _window_keys_list(frame: pd.DataFrame) -> list:
    return list(zip(frame["instance_id"].astype(int), pd.to_datetime(frame["window_start"], utc=True), strict=True))


if __name__ == "__main__":
    main()
