"""Outages: an instance goes quiet for a while on the last day of a log; are its windows flagged?

Usage::

    python benchmarks/silence.py --data FILE [--trials 40] [--seed 0] [--minutes 10 40]

``FILE`` is a log without collective kinds (the classic demo log: ``workbench generate --days 4
--instances 16 --seed 0``). Each trial picks an instance of the last day and a stretch of it at
random (start uniform over the day, 10-40 minutes, or ``--minutes LO HI``: ``--minutes 60 240`` for
pauses of hours) and removes its queries there: all of them (an outage, a paused cluster) or, every
other trial, 60-90 % of them (most clients cut off). Nothing
else changes. The windows of the whole log are computed as the stream does (``windows_of``), with
the silent windows of :func:`~workbench.analysis.collective.with_silent_windows`, and the last day
is judged with the default constants. A trial's labelled windows are those the stretch covers for
their whole length; the windows it only touches are counted apart (part of their traffic is
there). Found: a labelled window flagged on any signal. Only the window
statistics are judged (no model: the two residual signals have no queries to read in a silent
window).

Prints one line per trial, then the window recall per change and per the traffic a labelled window
lost (its queries removed; the drop's floor is 30 queries, so fewer are not expected to be flagged;
a window of a long pause at an hour its instance is quiet on every day loses few), and the flagged
windows of the unchanged day on the ``arrivals_drop`` signal (false windows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.analysis.collective import flag_windows, windows_of, with_silent_windows

_WINDOW = pd.Timedelta(minutes=10)


def _judged(table: pa.Table, day: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The flagged (window, signal) rows of ``day`` and every window of the log (silent ones included)."""
    windows = with_silent_windows(windows_of(table))
    today = windows[windows["window_start"] >= day]
    return flag_windows(today, windows).to_pandas(), windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=int, nargs=2, default=(10, 40), metavar=("LO", "HI"),
                        help="how long a stretch lasts, in minutes (uniform, both ends included)")
    args = parser.parse_args()

    table = pq.read_table(args.data)
    ts = pd.DatetimeIndex(pd.to_datetime(table.column("arrival_timestamp").to_numpy(zero_copy_only=False),
                                         utc=True))
    day = ts.max().normalize()
    instance = table.column("instance_id").to_numpy(zero_copy_only=False)
    instances = np.unique(instance[np.asarray(ts >= day)])
    flagged, windows = _judged(table, day)
    false_drops = flagged[flagged["signal"] == "arrivals_drop"]
    rng = np.random.default_rng(args.seed)
    results, edges = [], []
    for trial in range(args.trials):
        inst = int(rng.choice(instances))
        lo, hi = args.minutes
        start = day + pd.Timedelta(minutes=int(rng.integers(0, max(24 * 60 - hi, 1))))
        end = start + pd.Timedelta(minutes=int(rng.integers(lo, hi + 1)))
        share = 1.0 if trial % 2 == 0 else float(rng.uniform(0.6, 0.9))
        inside = (instance == inst) & np.asarray(ts >= start) & np.asarray(ts < end)
        drop = inside & (rng.random(len(inside)) < share)
        got, _ = _judged(table.filter(pa.array(~drop)), day)
        first = start.floor("10min")
        touched = pd.date_range(first, end, freq="10min", inclusive="left")
        labelled = [w for w in touched if w >= start and w + _WINDOW <= end]
        hit = got[(got["instance_id"] == inst) & got["window_start"].isin(labelled)]
        edge = got[(got["instance_id"] == inst) & got["window_start"].isin(set(touched) - set(labelled))]
        per_window = int(inside.sum()) / ((end - start) / _WINDOW)
        change = "outage" if share == 1.0 else "clients cut off"
        lost = pd.Series(ts[drop]).dt.floor("10min").value_counts()
        found = set(hit["window_start"])
        results.extend({"change": change, "lost": int(lost.get(w, 0)), "labelled": 1, "found": int(w in found)}
                       for w in labelled)
        edges.append({"change": change, "edges": len(touched) - len(labelled),
                      "edges flagged": edge["window_start"].nunique()})
        print(f"instance {inst:5d} {start:%H:%M}-{end:%H:%M} {change:15s} ({share:.0%} of {int(inside.sum())} "
              f"queries removed, {per_window:.0f} a window) flagged {hit['window_start'].nunique()}/"
              f"{len(labelled)} windows it covers ({', '.join(sorted(set(hit['signal']))) or '-'}), "
              f"{edge['window_start'].nunique()}/{len(touched) - len(labelled)} it touches")
    frame = pd.DataFrame(results, columns=["change", "lost", "labelled", "found"])
    frame["queries lost"] = pd.cut(frame["lost"], [-1, 9.999, 29.999, np.inf],
                                   labels=["< 10 a window", "10-30", ">= 30"])
    print()
    print(frame.groupby(["change", "queries lost"], observed=True)[["found", "labelled"]].sum()
          .assign(recall=lambda f: f["found"] / f["labelled"].clip(lower=1)).to_string())
    print("\nwindows a stretch only touches (part of their traffic there), flagged:")
    print(pd.DataFrame(edges).groupby("change")[["edges flagged", "edges"]].sum().to_string())
    print(f"\nunchanged day: {len(false_drops)} windows flagged on arrivals_drop "
          f"({windows['window_start'].ge(day).sum()} windows judged, "
          f"{int((windows['total_queries'] == 0).sum())} of the log's windows silent)")
    if len(false_drops):
        print(false_drops[["instance_id", "window_start", "expected", "observed", "score"]].to_string(index=False))


if __name__ == "__main__":
    main()
