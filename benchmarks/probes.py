"""Held-out probes: Redshift failure modes the generator does not make, injected into the last day of a log.

Usage::

    python -m benchmarks.probes --data FILE [--days 4] [--seed 0] [--models DIR] [--set main|more]

``FILE`` is a log without stress kinds (the classic demo log: ``workbench generate --days 4
--instances 16 --seed 0``). The benchmark trains one version on every day but the last, as
``benchmarks/detection.py`` does (``--models DIR`` keeps it for the next run), applies every probe
of ``benchmarks._probes.PROBES`` (``--set more``: ``MORE_PROBES``, on a copy of its own) to the last
day (each on its own rows, instances and times; nothing else of the day changes) and scores that day
with the default detector. Probe rows are labelled with the probe's
name, collective probes also label every 10-minute window holding at least 10 affected queries.

The probes themselves, and how each picks its rows, are in ``benchmarks/_probes.py``.

Reported per probe: rows, instances (with their size initial), the product's per-query recall at
the default constants (the detector's alerts and the queries the deferred step of the scoring app
adds: runs of a statement that stays slower, :mod:`workbench.analysis.persistence`, and queries of
a slower group, :mod:`workbench.analysis.slower_groups`; column ``of it persistence``: the share
only that step flags) and the probe rows' median score (1 = the alert bar), the baseline's recall at
the detector's alert volume (its top-k scores); for collective probes the labelled windows flagged
by :mod:`workbench.analysis.collective` (default constants) and the signals that flagged them. Last,
the false alerts per 10k normal queries, the PR-AUC of every per-query label (the log's and the
point / contextual probes') against the normal rows, and the flagged windows that no probe touched
and no labelled query explains (and how many of those the unprobed day flags too). Misses of
per-query probes come with the median number of normal rows that dominate them
(:func:`~workbench.ml.evaluate.dominating_normals`: at least as much excess and ratio on every
exceeded signal), a lower bound on the false alerts any monotone score must add to catch them.

Column ``runtime residual``: the labelled windows the product's runtime-residual signal flags on its
own (``runtime_residual`` of :mod:`workbench.analysis.collective`, from
:func:`workbench.analysis.residual_windows.residual_windows`: the median runtime residual of the
window's executed queries against the model's expectation, judged against the instance's earlier
windows; the ``windows`` column counts it with every other signal). The training days' residuals
come from the same version, in-sample (their fingerprint history includes them; the scoring app's
history is scored out-of-sample); per instance their window medians sit within 0.1 of the
evaluation day's on the demo log, small against the ``ln 1.5`` floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# run as a script (python benchmarks/probes.py) too: its helpers are imported as the benchmarks package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.metrics import average_precision_score

from benchmarks._probes import MIN_WINDOW_ROWS, PROBE_SETS, Probe, apply_probes
from benchmarks.detection import (
    _detect,
    _inputs,
    deferred_flags,
    holdout_inputs,
    train_all_but_last,
)
from workbench.analysis.collective import score_window_runs, windows_of, with_silent_windows
from workbench.analysis.residual_windows import RESIDUAL_SIGNAL
from workbench.ml._train import load_log_window
from workbench.ml.baseline import baseline_for_table
from workbench.ml.detector import ResidualDetector
from workbench.ml.evaluate import dominating_normals
from workbench.ml.residual_history import reference_residuals, residuals_of, with_residuals

DEFAULTS = {"max_scale": 1.0, "floor_factor": 1.0, "alert_rate": 0.0005}


# --- scoring ----------------------------------------------------------------------------------
def _window_keys(frame: pd.DataFrame) -> set:
    return set(zip(frame["instance_id"].astype(int), pd.to_datetime(frame["window_start"], utc=True), strict=True))


def _scored_windows(day: pa.Table, residuals: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Every (window, signal) of ``day`` against ``history`` and the day's earlier windows (default constants)."""
    today = with_residuals(windows_of(day), residuals)
    first = pd.to_datetime(today["window_start"], utc=True).min().normalize()
    windows = with_silent_windows(pd.concat([history, today], ignore_index=True))
    return score_window_runs(windows[windows["window_start"] >= first], windows)


def _best(scored: pd.DataFrame) -> pd.DataFrame:
    """Each window with its best collective score and signal."""
    return scored.sort_values("score", ascending=False).drop_duplicates(["instance_id", "window_start"])


def _query_rows(probes: tuple[Probe, ...], day: pa.Table, label: np.ndarray, inputs: dict, score: np.ndarray,
                alert: np.ndarray, sizes: dict[str, list[int]], persistent: np.ndarray) -> list[dict]:
    """Per probe: rows, instances (size class initial), recall, median score, the baseline's recall
    at the detector's alert volume, and per miss the normal rows that dominate it (median).
    ``alert`` is the detector's; ``persistent`` the queries the deferred step adds (persistence and
    slower groups; recall counts both)."""
    logged = day.column("label_anomaly").to_numpy(zero_copy_only=False).astype(bool)
    normal = ~logged & pd.isna(label)
    inst = day.column("instance_id").to_numpy(zero_copy_only=False)
    pred_mean, pred_q = (np.expm1(np.clip(inputs[k], 0.0, 50.0)) for k in ("mean", "q"))
    b_score, _, _ = baseline_for_table(day, {"pred_mean_ms": pred_mean, "pred_q_ms": pred_q})
    base_top = np.zeros(len(alert), dtype=bool)
    base_top[np.argsort(-b_score, kind="stable")[:int(alert.sum())]] = True
    det = ResidualDetector()
    expected = det.expected(inputs["mean"], inputs["refs"])
    excess = det.excess(inputs["obs"], expected)
    log_ratio = {s: inputs["obs"][s] - np.log1p(expected[s]) for s in excess}
    size_of = {i: name[0] for name, members in sizes.items() for i in members}
    rows = []
    for probe in probes:
        sel = label == probe.name
        row: dict = {"probe": probe.name, "family": probe.family, "rows": int(sel.sum())}
        if sel.any():
            missed = np.flatnonzero(sel & ~alert)
            dominated = dominating_normals(missed, normal, excess, log_ratio, inputs["source"] == 0) if (
                probe.family != "collective" and len(missed)) else np.array([])
            row |= {"instances": ",".join(f"{i}{size_of.get(i, '?')}" for i in sorted(set(inst[sel].tolist()))),
                    "recall": float((alert | persistent)[sel].mean()),
                    "of it persistence": float((persistent & ~alert)[sel].mean()),
                    "median score": float(np.median(score[sel])),
                    "baseline recall": float(base_top[sel].mean()),
                    "misses dominated by": f"{np.median(dominated):.0f}" if len(dominated) else ""}
        rows.append(row)
    rows.append({"probe": "false alerts / 10k normal", "family": "",
                 "rows": int(normal.sum()), "recall": float((alert | persistent)[normal].mean() * 1e4),
                 "of it persistence": float((persistent & ~alert)[normal].mean() * 1e4)})
    point = np.isin(label, [p.name for p in probes if p.family != "collective"]) | logged
    keep = point | normal
    rows.append({"probe": "PR-AUC point+contextual+log", "family": "", "rows": int(point.sum()),
                 "recall": float(average_precision_score(point[keep], score[keep]))})
    return rows


def _window_rows(probes: tuple[Probe, ...], original: pa.Table, day: pa.Table, label: np.ndarray,
                 labelled: pd.DataFrame,
                 history: pa.Table, residuals: dict[str, pd.DataFrame]) -> tuple[dict[str, dict], str]:
    """Per collective probe: labelled windows flagged (and the signals that flagged them); and a
    line on the flagged windows no probe explains. ``residuals``: the residual windows of the
    ``history``, ``day`` and ``original`` tables (:func:`workbench.ml.residual_history.residuals_of`)."""
    history_windows = with_residuals(windows_of(history), residuals["history"])
    scored = _scored_windows(day, residuals["day"], history_windows).query("score >= 1.0")
    hit = _best(scored)
    before = _window_keys(_best(_scored_windows(original, residuals["original"], history_windows)).query(
        "score >= 1.0"))
    inst = day.column("instance_id").to_numpy(zero_copy_only=False)
    ts = pd.to_datetime(day.column("arrival_timestamp").to_numpy(zero_copy_only=False), utc=True).floor("10min")
    family = {p.name: p.family for p in probes}
    in_episode = np.array([family.get(x) == "collective" for x in label])
    touched = set(zip(inst[in_episode], ts[in_episode], strict=True))
    # windows holding a labelled per-query anomaly (the log's, or a point / contextual probe's)
    per_query = ~in_episode & (day.column("label_anomaly").to_numpy(zero_copy_only=False) | ~pd.isna(label))
    explained = set(zip(inst[per_query], ts[per_query], strict=True))
    residual = _window_keys(scored[scored["signal"] == RESIDUAL_SIGNAL])
    out = {}
    for name, group in labelled.groupby("probe"):
        keys = _window_keys(group)
        found = hit[[k in keys for k in _window_keys_list(hit)]]
        out[str(name)] = {"windows": f"{len(found)}/{len(keys)}",
                          "top signals": ",".join(sorted(set(found["signal"]))) or "-",
                          "runtime residual": f"{len(keys & residual)}/{len(keys)}"}
    hit_keys = _window_keys(hit)
    unlabelled = hit_keys - _window_keys(labelled) - touched - explained
    residual_unexplained = residual - _window_keys(labelled) - touched - explained
    line = (f"flagged windows no probe touched and no labelled query explains: {len(unlabelled)} "
            f"({len(unlabelled & before)} of them flagged on the unprobed day too; unprobed day: "
            f"{len(before - explained)}); flagged windows with fewer than {MIN_WINDOW_ROWS} queries of an "
            f"episode: {len((hit_keys & touched) - _window_keys(labelled))}. Runtime residual alone: "
            f"{len(residual_unexplained)} such windows ({len(residual_unexplained & before)} flagged on the "
            "unprobed day too)")
    return out, line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, help="registry to reuse (trained there on the first run)")
    parser.add_argument("--set", choices=sorted(PROBE_SETS), default="main",
                        help="the probes: the main set, or the second set on its own copy of the day")
    args = parser.parse_args()
    probes = PROBE_SETS[args.set]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, hold_table, train_day, eval_day = train_all_but_last(args.data, args.days, args.models or Path(tmp))
        by_day = Path(f"{args.models}.by-day") if args.models else Path(tmp) / "by-day"  # the app's versions
        history = load_log_window(args.data, train_day, 7)
        original = load_log_window(args.data, eval_day, 1)
        day, label, labelled, sizes = apply_probes(original, history, args.seed, probes)
        hold, inputs = holdout_inputs(model, hold_table), _inputs(model, day)
        score, alert = _detect(DEFAULTS, hold, inputs)
        persistent = deferred_flags(day, inputs, alert, model.version)
        first = eval_day - dt.timedelta(days=args.days - 1)
        residuals = {"history": reference_residuals(args.data, first, train_day, by_day),
                     **{name: residuals_of(model, table) for name, table in (("day", day), ("original", original))}}
    rows = _query_rows(probes, day, label, inputs, score, alert, sizes, persistent)
    windows, line = _window_rows(probes, original, day, label, labelled, history, residuals)
    table = pd.DataFrame([r | windows.get(r["probe"], {}) for r in rows])
    pd.set_option("display.width", 250)
    print(f"train {train_day} (7-day window), probe ({args.set} set) and evaluate {eval_day}; seed {args.seed}; "
          f"{time.perf_counter() - t0:.0f} s; detector alerts {int(alert.sum())}, deferred step adds "
          f"{int((persistent & ~alert).sum())}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    print(line)


def _window_keys_list(frame: pd.DataFrame) -> list:
    return list(zip(frame["instance_id"].astype(int), pd.to_datetime(frame["window_start"], utc=True), strict=True))


if __name__ == "__main__":
    main()
