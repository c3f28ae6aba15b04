"""Collective probes the generator does not make: inject a change into one instance for 20 minutes, score its windows.

Usage::

    python benchmarks/collective_probe.py --data FILE [--day 2024-03-07] [--trials 16] [--seed 0]

``FILE`` is a log without collective kinds (the classic demo log: ``workbench generate --days 4
--instances 16 --seed 0``). Each trial picks a busy instance and a 20-minute stretch of ``--day``
and applies one of four changes to every query there, none of which is a generator kind: every
query waits 2-5 s longer; 40 % of the queries abort; every query runs 2 s longer; half the queries
spill 100 MB. The instance's windows (``windows_of``, the stream's math) of the last 8 days are
scored with the default :class:`~workbench.analysis.collective.CollectiveParams`; a trial's windows
count as found when any signal flags them. Prints one line per trial (windows flagged, their query
counts, the top signal) and the window recall per change.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis.collective import score_window_runs, windows_of
from workbench.ml._train import load_log_window


def _set(table: pa.Table, name: str, values: np.ndarray, typ: pa.DataType) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, typ))


def _inject(table: pa.Table, sel: np.ndarray, change: int, rng: np.random.Generator) -> tuple[pa.Table, str]:
    if change == 0:
        add = float(rng.uniform(2_000, 5_000))
        q = pc.fill_null(table["queue_duration_ms"], 0).to_numpy().copy()
        q[sel] += int(add)
        return _set(table, "queue_duration_ms", q, pa.int64()), f"wait +{add / 1000:.1f} s"
    if change == 1:
        a = pc.fill_null(table["was_aborted"], False).to_numpy(zero_copy_only=False).copy()
        a[sel & (rng.random(len(a)) < 0.4)] = True
        return _set(table, "was_aborted", a, pa.bool_()), "40 % abort"
    if change == 2:
        e = pc.fill_null(table["execution_duration_ms"], 0).to_numpy().copy()
        e[sel] += 2_000
        return _set(table, "execution_duration_ms", e, pa.int64()), "run +2 s"
    s = pc.fill_null(table["mbytes_spilled"], 0).to_numpy().copy()
    s[sel & (rng.random(len(s)) < 0.5)] += 100
    return _set(table, "mbytes_spilled", s, pa.int64()), "50 % spill"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--day", type=dt.date.fromisoformat, default=dt.date(2024, 3, 7))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = load_log_window(args.data, args.day, 8)
    inst_all = table["instance_id"].to_numpy()
    ts = pd.DatetimeIndex(pd.to_datetime(table["arrival_timestamp"].to_numpy(zero_copy_only=False), utc=True))
    today = np.asarray(ts >= pd.Timestamp(args.day, tz="UTC"))
    insts, counts = np.unique(inst_all[today], return_counts=True)
    rng = np.random.default_rng(args.seed)
    found: dict[str, list[int]] = {}
    for trial in range(args.trials):
        inst = int(rng.choice(insts[counts >= 4 * 144]))
        start = ts[rng.choice(np.flatnonzero((inst_all == inst) & today))].floor("10min")
        end = start + pd.Timedelta(minutes=20)
        sel = (inst_all == inst) & np.asarray(ts >= start) & np.asarray(ts < end)
        changed, name = _inject(table, sel, trial % 4, rng)
        windows = windows_of(changed.filter(pa.array(inst_all == inst)))
        windows["window_start"] = pd.to_datetime(windows["window_start"], utc=True)
        target = windows[(windows["window_start"] >= start) & (windows["window_start"] < end)]
        scored = score_window_runs(target, windows)
        hit = scored.loc[scored["score"] >= 1, "window_start"].nunique()
        top = scored.sort_values("score", ascending=False).groupby("window_start").head(1)
        kind = name.split(" +")[0] if "+" in name else name
        found.setdefault(kind, [0, 0])
        found[kind][0] += hit
        found[kind][1] += len(target)
        print(f"instance {inst:5d} {start:%H:%M} {name:12s} flagged {hit}/{len(target)} windows "
              f"(queries {target['total_queries'].tolist()}); top: "
              + "; ".join(f"{r.signal} z={r.z:.1f}" for r in top.itertuples()))
    for kind, (hit, total) in found.items():
        print(f"window recall [{kind}]: {hit}/{total}")


if __name__ == "__main__":
    main()
