"""The held-out probes of ``benchmarks/probes.py``: failure modes the generator does not make, on one day of a log.

:func:`apply_probes` changes a copy of the day (pandas) through :class:`ProbeDay`, which knows what is usual
(the training window's statistics per statement and instance), which rows are still free (normal, untouched,
outside every episode) and the label of every changed or added row; collective probes also label their
windows (at least :data:`MIN_WINDOW_ROWS` affected queries, as the generator does).

Instances are sized by their queries on the probed day (:data:`SIZES`): busy (>= 20k), mid-size
(3k-20k), small (500-3k, with history). The probes (none is a generator kind, nor a parameter
variation of one):

point
    ``plan_flip`` a known statement (>= 2 s) 3-5x slower, mid-size instances; ``new_runaway`` a
    never-seen statement running 5-40 minutes; ``scan_30x`` a known statement (>= 100 MB) scanning
    30x its usual MB at the instance's usual per-MB pace; ``queue_10min`` one query waits 10
    minutes; ``compile_3min`` a known statement with a compile history compiles for 3 minutes;
    ``spill_20gb`` a statement that never spilled spills 15-25 GB (and runs 1.5-2.5x longer);
    ``plan_stays_slow`` from one run on, every later run of the day of a known statement 2-3x
    slower; ``heavy_slower`` a known heavy statement (>= 1 min) 2-4x slower once; ``first_spill`` a
    statement that never spilled (>= 1 GB read) spills 1-3x its scan once and runs 2-4x longer;
    ``spill_beyond_largest`` a statement that spilled before spills 10-30x its largest spill (at least
    1 GB) once and runs 1.5-3x longer.
contextual
    ``heavy_at_peak`` a heavy statement (>= 1 min) that normally runs at night on one instance
    runs at the busy hours on a smaller one; ``small_as_big`` queries of a small instance take what
    the busiest instance's heavy queries of their type take (its top decile, at least 10x their own).
collective
    ``wait_mid`` / ``wait_small`` every query waits 2-5 s longer for 20 minutes; ``arrivals_3x``
    short queries arrive 3x as often for 20 minutes; ``retry_loop`` one statement repeated 30
    times in 10 minutes, 80 % aborted; ``cache_off`` the result cache disabled for 30 minutes
    (hits become executions of their source statement); ``slow_40min`` every query 1.5-2x slower
    for 40 minutes.

A second set (:data:`MORE_PROBES`, ``benchmarks/probes.py --set more``), measured on its own copy of the day
because the main set takes the free episode slots: collective failure modes of other mechanisms and the
main set's collective probes on busy instances (the issue's held-out kind 2 names no instance size).
``wait_busy`` / ``slow_busy`` as ``wait_mid`` / ``slow_40min`` on busy instances; ``cold_compile`` the
compile cache lost (a restart, a patch): every query compiles again for 2-15 s, 30 minutes;
``stale_stats`` statistics stale after a large load: queries reading >= 10 MB scan 3-5x and run 2-3x
longer, 30 minutes; ``wlm_abort`` a query monitoring rule set too tight aborts every query past half a
second, 20 minutes; ``write_contention`` writes (insert, update, delete, copy, ctas) 2-4x slower behind
a vacuum or a deep copy, 40 minutes; ``reads_slower`` selects only 2-3x slower, 40 minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

#: Day-row counts that size an instance: (class, lowest, highest).
SIZES: tuple[tuple[str, int, int], ...] = (("busy", 20_000, 10**12), ("mid", 3_000, 20_000), ("small", 500, 3_000))
POINT_ROWS = 24  # rows per point / contextual probe (recall in steps of ~0.04)
EPISODES = 3  # episodes per collective probe
MIN_WINDOW_ROWS = 10  # affected queries that make a window a labelled collective anomaly (as the generator)
_WINDOW = pd.Timedelta(minutes=10)


def _seconds(values: np.ndarray | float) -> pd.TimedeltaIndex:
    """Durations in whole microseconds (the log's resolution)."""
    return pd.to_timedelta(np.rint(np.atleast_1d(values) * 1e6).astype(np.int64), unit="us")


def _nums(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").fillna(0).to_numpy(np.float64)


def history_stats(history: pa.Table) -> pd.DataFrame:
    """Per ``(instance_id, feature_fingerprint)`` of the training window: runs, median runtime and
    scan, largest spill, share of runs at night (0-6 h UTC), compiled runs (>= 10 ms)."""
    cols = ["instance_id", "feature_fingerprint", "execution_duration_ms", "mbytes_scanned", "mbytes_spilled",
            "compile_duration_ms", "arrival_timestamp"]
    h = history.select(cols).to_pandas()
    h = h[h["feature_fingerprint"].notna()]
    h["night"] = (h["arrival_timestamp"].dt.hour < 6).astype(float)
    h["compiled"] = (pd.to_numeric(h["compile_duration_ms"]).fillna(0) >= 10).astype(float)
    g = h.groupby(["instance_id", "feature_fingerprint"], sort=False)
    return pd.DataFrame({"n": g.size(), "med_exec": g["execution_duration_ms"].median(),
                         "med_scan": g["mbytes_scanned"].median(), "max_spill": g["mbytes_spilled"].max(),
                         "night": g["night"].mean(), "compiled": g["compiled"].sum()})


def instance_pace(history: pa.Table) -> dict[int, float]:
    """Median ms per MB of each instance's reads of at least 1 GB (its usual reading pace)."""
    h = history.select(["instance_id", "execution_duration_ms", "mbytes_scanned"]).to_pandas()
    h = h[(h["mbytes_scanned"] >= 1_000) & (h["execution_duration_ms"] > 0)]
    pace = (h["execution_duration_ms"] / h["mbytes_scanned"]).groupby(h["instance_id"]).median()
    return {int(k): float(v) for k, v in pace.items()}


@dataclass
class ProbeDay:
    """One day of a log being probed: its rows (pandas), the probe label per row, the episodes."""

    frame: pd.DataFrame
    schema: pa.Schema
    stats: pd.DataFrame
    pace: dict[int, float]
    rng: np.random.Generator
    size_bounds: tuple[tuple[str, int, int], ...] = SIZES
    label: np.ndarray = field(init=False)
    sizes: dict[str, list[int]] = field(init=False)
    episodes: list[tuple[int, pd.Timestamp, pd.Timestamp, str]] = field(default_factory=list)
    windows: list[tuple[int, pd.Timestamp, str]] = field(default_factory=list)
    _added: list[pd.DataFrame] = field(default_factory=list)
    _next_id: int = 0

    def __post_init__(self) -> None:
        self.label = np.full(len(self.frame), None, dtype=object)
        counts = self.frame["instance_id"].value_counts()
        known = set(self.stats.index.get_level_values(0))
        self.sizes = {name: sorted(int(i) for i, c in counts.items() if lo <= c < hi and int(i) in known)
                      for name, lo, hi in self.size_bounds}
        self._next_id = int(self.frame["query_id"].max()) + 1
        merged = self.frame[["instance_id", "feature_fingerprint"]].merge(
            self.stats, left_on=["instance_id", "feature_fingerprint"], right_index=True, how="left")
        self.hist = merged.drop(columns=["instance_id", "feature_fingerprint"]).reset_index(drop=True)

    @classmethod
    def from_table(cls, day: pa.Table, history: pa.Table, seed: int,
                   sizes: tuple[tuple[str, int, int], ...] = SIZES) -> ProbeDay:
        """A probe day from the day's rows and the training window's (for what is usual)."""
        frame = day.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
        return cls(frame=frame, schema=day.schema, stats=history_stats(history), pace=instance_pace(history),
                   rng=np.random.default_rng(seed), size_bounds=sizes)

    # --- selecting ------------------------------------------------------------------------
    def on(self, *sizes: str) -> np.ndarray:
        """Rows of instances of the given size classes."""
        return self.frame["instance_id"].isin([i for s in sizes for i in self.sizes[s]]).to_numpy()

    def free(self) -> np.ndarray:
        """Rows that are normal (no label in the log), untouched by any probe and outside every episode
        (and its neighbouring windows), executed (not cached, not aborted, with a runtime)."""
        f = self.frame
        ok = ~f["label_anomaly"].fillna(False).to_numpy(bool) & pd.isna(self.label)
        ok &= ~f["was_cached"].fillna(False).to_numpy(bool) & ~f["was_aborted"].fillna(False).to_numpy(bool)
        ok &= _nums(f, "execution_duration_ms") > 0
        ts = f["arrival_timestamp"]
        for inst, start, end, _ in self.episodes:
            ok &= ~((f["instance_id"] == inst) & (ts >= start - _WINDOW) & (ts < end + _WINDOW)).to_numpy()
        return ok

    def pick(self, candidates: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` candidate rows, spread over the candidates' instances (round robin, random order)."""
        idx = np.flatnonzero(candidates)
        if not len(idx):
            return idx
        inst = self.frame["instance_id"].to_numpy()[idx]
        pools = {int(i): list(self.rng.permutation(idx[inst == i])) for i in self.rng.permutation(np.unique(inst))}
        out: list[int] = []
        while len(out) < n and any(pools.values()):
            for pool in pools.values():
                if pool and len(out) < n:
                    out.append(int(pool.pop()))
        return np.asarray(out, dtype=np.int64)

    # --- changing -------------------------------------------------------------------------
    def set(self, idx: np.ndarray, name: str, **columns: np.ndarray | float) -> None:
        """Set columns of rows ``idx`` and label them ``name``."""
        for column, values in columns.items():
            position = self.frame.columns.get_loc(column)
            self.frame.iloc[idx, position] = np.rint(values) if column.endswith(("_ms", "mbytes_scanned",
                                                                                "mbytes_spilled")) else values
        self.label[idx] = name

    def add(self, rows: pd.DataFrame, name: str) -> None:
        """Append new rows (fresh query ids), labelled ``name``."""
        rows = rows.copy()
        rows["query_id"] = np.arange(self._next_id, self._next_id + len(rows))
        self._next_id += len(rows)
        rows["_probe"] = name
        self._added.append(rows)

    def episode(self, inst: int, start: pd.Timestamp, end: pd.Timestamp, name: str, affected: pd.Series) -> None:
        """Record an episode; label its windows with at least :data:`MIN_WINDOW_ROWS` affected queries."""
        self.episodes.append((inst, start, end, name))
        counts = affected.dt.floor("10min").value_counts()
        self.windows += [(inst, w, name) for w, c in counts.items() if c >= MIN_WINDOW_ROWS]

    def slot(self, sizes: tuple[str, ...], minutes: int) -> tuple[int, pd.Timestamp, pd.Timestamp] | None:
        """A ``minutes``-long stretch on a 10-minute boundary during the busiest hours of an instance
        of ``sizes`` (so that the episode's windows hold queries), on the instance with the fewest
        episodes so far, at least two hours from its other episodes (each is judged against a
        history without the others' windows: the collective reference skips the hour before)."""
        insts = [i for s in sizes for i in self.sizes[s]]
        if not insts:
            return None
        load = {i: sum(e[0] == i for e in self.episodes) for i in insts}
        for inst in sorted(self.rng.permutation(insts).tolist(), key=lambda i: load[i]):
            ts = self.frame.loc[self.frame["instance_id"] == inst, "arrival_timestamp"]
            per_hour = ts.dt.floor("h").value_counts()
            busiest = per_hour[per_hour >= per_hour.quantile(0.75)].index
            day_end = ts.dt.floor("D").iloc[0] + pd.Timedelta(days=1)
            others = [(s, e) for i, s, e, _ in self.episodes if i == inst]
            for _ in range(20):
                start = busiest[int(self.rng.integers(len(busiest)))] + pd.Timedelta(minutes=10 * int(
                    self.rng.integers(0, 6)))
                start = min(start, day_end - pd.Timedelta(minutes=minutes))
                end = start + pd.Timedelta(minutes=minutes)
                gap = pd.Timedelta(hours=2)
                if all(end + gap <= s or e + gap <= start for s, e in others):
                    return int(inst), start, end
        return None

    def in_slot(self, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
        f = self.frame
        ts = f["arrival_timestamp"]
        return ((f["instance_id"] == inst) & (ts >= start) & (ts < end)).to_numpy()

    def table(self) -> tuple[pa.Table, np.ndarray]:
        """The probed day as Arrow (sorted by arrival, then query id) and the probe label per row."""
        frame = self.frame.assign(_probe=self.label)
        frame = pd.concat([frame, *self._added], ignore_index=True) if self._added else frame
        frame = frame.sort_values(["arrival_timestamp", "query_id"], kind="stable", ignore_index=True)
        label = frame.pop("_probe").to_numpy(object)
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        return table.replace_schema_metadata(self.schema.metadata), label  # the log's, not pandas' dtypes


# --- the probes -------------------------------------------------------------------------------
def _known(day: ProbeDay, runs: int = 5) -> np.ndarray:
    return day.hist["n"].fillna(0).to_numpy() >= runs


def _plan_flip(day: ProbeDay, name: str) -> None:
    cand = day.free() & day.on("mid") & _known(day) & (day.hist["med_exec"].fillna(0).to_numpy() >= 2_000)
    idx = day.pick(cand, POINT_ROWS)
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx]
    day.set(idx, name, execution_duration_ms=exec_ms * day.rng.uniform(3, 5, len(idx)))


def _plan_stays_slow(day: ProbeDay, name: str) -> None:
    # A plan that regresses stays regressed: from one run on, every later run of the day of a known
    # statement (>= 1 s) is 2-3x slower. Statements with 6-40 free runs that day, at most 12 changed each.
    f = day.frame
    cand = day.free() & day.on("busy", "mid") & _known(day) & (day.hist["med_exec"].fillna(0).to_numpy() >= 1_000)
    keys = f["instance_id"].astype("int64").astype(str) + "/" + f["feature_fingerprint"].astype(str)
    runs = pd.Series(np.flatnonzero(cand)).groupby(keys.to_numpy()[cand]).agg(list)
    runs = runs[runs.map(len).between(6, 40)]
    if runs.empty:
        return
    exec_all = _nums(f, "execution_duration_ms")
    changed = 0
    for key in day.rng.permutation(runs.index.to_numpy()):
        if changed >= POINT_ROWS:
            break
        rows = np.asarray(sorted(runs[key], key=lambda i: f["arrival_timestamp"].iat[i]), dtype=np.int64)
        first = int(day.rng.integers(1, len(rows) - 4))
        idx = rows[first:first + 12]
        factor = day.rng.uniform(2, 3) * np.exp(day.rng.normal(0, 0.1, len(idx)))
        day.set(idx, name, execution_duration_ms=exec_all[idx] * factor)
        changed += len(idx)


def _heavy_slower(day: ProbeDay, name: str) -> None:
    # A heavy statement (>= 1 min) that the instance runs often takes 2-4x its time once: minutes lost,
    # though a heavy statement's run-to-run spread makes the ratio ordinary.
    cand = day.free() & day.on("busy", "mid", "small") & _known(day) & (
        day.hist["med_exec"].fillna(0).to_numpy() >= 60_000)
    idx = day.pick(cand, POINT_ROWS)
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx]
    day.set(idx, name, execution_duration_ms=exec_ms * day.rng.uniform(2, 4, len(idx)))


def _first_spill(day: ProbeDay, name: str) -> None:
    # A statement that never spilled (5 runs or more) and reads at least 1 GB runs out of memory once
    # (a larger input, a smaller WLM slot): it spills 1-3x its scan to disk and takes 2-4x its time.
    never = _known(day) & (day.hist["max_spill"].fillna(1).to_numpy() == 0)
    cand = day.free() & day.on("busy", "mid", "small") & never & (_nums(day.frame, "mbytes_scanned") >= 1_000)
    idx = day.pick(cand, POINT_ROWS)
    scan = _nums(day.frame, "mbytes_scanned")[idx]
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx]
    day.set(idx, name, mbytes_spilled=scan * day.rng.uniform(1, 3, len(idx)),
            execution_duration_ms=exec_ms * day.rng.uniform(2, 4, len(idx)))


def _spill_beyond_largest(day: ProbeDay, name: str) -> None:
    # A statement that spills now and then (5 runs or more, some spilled) spills 10-30x the largest spill of
    # its history (at least 1 GB) and takes 1.5-3x its time: a hash join on the wrong side, a skewed key.
    largest = day.hist["max_spill"].fillna(0).to_numpy()
    cand = day.free() & day.on("busy", "mid", "small") & _known(day) & (largest > 0)
    idx = day.pick(cand, POINT_ROWS)
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx]
    day.set(idx, name, mbytes_spilled=np.maximum(largest[idx] * day.rng.uniform(10, 30, len(idx)), 1_000),
            execution_duration_ms=exec_ms * day.rng.uniform(1.5, 3, len(idx)))


def _work_not_done(day: ProbeDay, name: str) -> None:
    # Work that did not happen: a statement that runs for 10 s or more as a rule (5 runs or more) ends in
    # 5-200 ms having read nothing (a load whose input never arrived, an ETL step that skipped its work).
    # Not a cache hit and not an abort: nothing in the row says so.
    work = day.frame["query_type"].isin(["copy", "insert", "ctas", "select", "unload", "update", "delete"]).to_numpy()
    cand = day.free() & work & _known(day) & (day.hist["med_exec"].fillna(0).to_numpy() >= 10_000)
    idx = day.pick(cand, POINT_ROWS)
    day.set(idx, name, execution_duration_ms=day.rng.uniform(5, 200, len(idx)), mbytes_scanned=np.zeros(len(idx)),
            mbytes_spilled=np.zeros(len(idx)))


def _new_runaway(day: ProbeDay, name: str) -> None:
    f = day.frame
    work = f["query_type"].isin(["select", "insert", "ctas", "update", "delete"]).to_numpy()
    idx = day.pick(day.free() & day.on("busy", "mid", "small") & work, POINT_ROWS)
    rows = f.iloc[idx].copy()
    rows["feature_fingerprint"] = [day.rng.bytes(32).hex() for _ in idx]
    rows["execution_duration_ms"] = np.rint(day.rng.uniform(5, 40, len(idx)) * 60_000).astype(np.int64)
    rows["arrival_timestamp"] += _seconds(day.rng.uniform(0, 300, len(idx)))
    day.add(rows, name)


def _scan_30x(day: ProbeDay, name: str) -> None:
    cand = day.free() & day.on("busy", "mid") & _known(day) & (day.hist["med_scan"].fillna(0).to_numpy() >= 100)
    idx = day.pick(cand, POINT_ROWS)
    scan = np.maximum(_nums(day.frame, "mbytes_scanned")[idx], day.hist["med_scan"].to_numpy()[idx])
    pace = np.array([day.pace.get(int(i), np.nan) for i in day.frame["instance_id"].to_numpy()[idx]])
    pace = np.where(np.isnan(pace), np.nanmedian(list(day.pace.values())), pace)
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx] + 29 * scan * pace
    day.set(idx, name, mbytes_scanned=30 * scan, execution_duration_ms=exec_ms)


def _queue_10min(day: ProbeDay, name: str) -> None:
    idx = day.pick(day.free() & day.on("busy", "mid", "small"), POINT_ROWS)
    day.set(idx, name, queue_duration_ms=600_000 + day.rng.uniform(0, 60_000, len(idx)))


def _compile_3min(day: ProbeDay, name: str) -> None:
    cand = day.free() & day.on("busy", "mid") & (day.hist["compiled"].fillna(0).to_numpy() >= 3)
    idx = day.pick(cand, POINT_ROWS)
    day.set(idx, name, compile_duration_ms=day.rng.uniform(150_000, 210_000, len(idx)))


def _spill_20gb(day: ProbeDay, name: str) -> None:
    never = _known(day) & (day.hist["max_spill"].fillna(1).to_numpy() == 0)
    scans = _nums(day.frame, "mbytes_scanned") > 0
    idx = day.pick(day.free() & day.on("busy", "mid", "small") & never & scans, POINT_ROWS)
    exec_ms = _nums(day.frame, "execution_duration_ms")[idx] * day.rng.uniform(1.5, 2.5, len(idx))
    day.set(idx, name, mbytes_spilled=day.rng.uniform(15_000, 25_000, len(idx)), execution_duration_ms=exec_ms)


def _heavy_at_peak(day: ProbeDay, name: str) -> None:
    f = day.frame
    heavy = (day.hist["med_exec"].fillna(0).to_numpy() >= 60_000) & (day.hist["night"].fillna(0).to_numpy() >= 0.5)
    sources = day.pick(day.free() & heavy & _known(day, 3), POINT_ROWS)
    sizes = f.groupby("instance_id")["cluster_size"].first()
    rows = f.iloc[sources].copy()
    targets = day.sizes["mid"] + day.sizes["small"]
    for pos, src in zip(rows.index, rows["instance_id"], strict=True):
        target = int(day.rng.choice([t for t in targets if t != src]))
        own, other = sizes.get(src), sizes.get(target)
        ratio = float(own / other) if pd.notna(own) and pd.notna(other) else 1.0
        rows.at[pos, "instance_id"] = target
        rows.at[pos, "cluster_size"] = other
        rows.at[pos, "arrival_timestamp"] = (rows.at[pos, "arrival_timestamp"].floor("D")
                                             + _seconds(3600 * (14 + 4 * day.rng.random()))[0])
        # slower on fewer nodes (as the generator's cluster factor) and at the busy hours
        exec_ms = rows.at[pos, "execution_duration_ms"] * max(ratio, 1.0) ** 0.4 * 1.2
        rows.at[pos, "execution_duration_ms"] = int(exec_ms)
    day.add(rows, name)


def _small_as_big(day: ProbeDay, name: str) -> None:
    f = day.frame
    big = max(day.sizes["busy"], key=lambda i: int((f["instance_id"] == i).sum()))
    exec_ms = _nums(f, "execution_duration_ms")
    top = {t: np.quantile(exec_ms[((f["instance_id"] == big) & (f["query_type"] == t)).to_numpy()], [0.9, 0.99])
           for t in f["query_type"].dropna().unique() if ((f["instance_id"] == big) & (f["query_type"] == t)).any()}
    target = np.array([top.get(t, (0.0, 0.0))[0] for t in f["query_type"].fillna("").to_numpy()])
    idx = day.pick(day.free() & day.on("small") & (target >= 10 * exec_ms), POINT_ROWS)
    lo = target[idx]
    hi = np.array([top[t][1] for t in f["query_type"].to_numpy()[idx]])
    day.set(idx, name, execution_duration_ms=np.exp(day.rng.uniform(np.log(lo), np.log(np.maximum(hi, lo)))))


def _collective(sizes: tuple[str, ...], minutes: int,
                change: Callable[[ProbeDay, str, int, pd.Timestamp, pd.Timestamp], pd.Series]
                ) -> Callable[[ProbeDay, str], None]:
    """A probe of :data:`EPISODES` episodes of ``minutes`` on instances of ``sizes``; ``change``
    applies one episode and returns the arrival times of the queries it affected."""
    def probe(day: ProbeDay, name: str) -> None:
        for _ in range(EPISODES):
            slot = day.slot(sizes, minutes)
            if slot is None:
                return
            day.episode(*slot, name, change(day, name, *slot))
    return probe


def _executed_in(day: ProbeDay, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    return np.flatnonzero(day.in_slot(inst, start, end) & day.free())


def _wait(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    idx = _executed_in(day, inst, start, end)
    queue = _nums(day.frame, "queue_duration_ms")[idx]
    day.set(idx, name, queue_duration_ms=queue + day.rng.uniform(2_000, 5_000, len(idx)))
    return day.frame["arrival_timestamp"].iloc[idx]


def _arrivals_3x(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    idx = _executed_in(day, inst, start, end)
    idx = idx[_nums(day.frame, "execution_duration_ms")[idx] < 1_000]
    rows = day.frame.iloc[np.repeat(idx, 2)].copy()
    rows["arrival_timestamp"] = start + _seconds(day.rng.uniform(0, (end - start).total_seconds(), len(rows)))
    day.add(rows, name)
    return rows["arrival_timestamp"]


def _retry_loop(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    mine = day.free() & (day.frame["instance_id"] == inst).to_numpy() & _known(day)
    mine &= day.frame["query_type"].isin(["select", "insert", "update", "delete"]).to_numpy()
    template = day.frame.iloc[[int(day.rng.choice(np.flatnonzero(mine)))]]
    rows = pd.concat([template] * 30, ignore_index=True)
    rows["arrival_timestamp"] = start + _seconds(np.sort(day.rng.uniform(0, 600, 30)))
    aborted = day.rng.random(30) < 0.8
    rows["was_aborted"] = pd.array(aborted, dtype="boolean")
    exec_ms = _nums(rows, "execution_duration_ms") * np.where(aborted, day.rng.uniform(0.05, 1.0, 30), 1.0)
    rows["execution_duration_ms"] = pd.array(np.rint(exec_ms).astype(np.int64), dtype="Int64")
    day.add(rows, name)
    return rows["arrival_timestamp"]


def _cache_off(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    f = day.frame
    hits = np.flatnonzero(day.in_slot(inst, start, end) & f["was_cached"].fillna(False).to_numpy(bool)
                          & pd.isna(day.label))
    position = pd.Series(np.arange(len(f)), index=pd.MultiIndex.from_arrays([f["instance_id"], f["query_id"]]))
    position = position[~position.index.duplicated()]
    keys = pd.MultiIndex.from_arrays([f["instance_id"].iloc[hits], f["cache_source_query_id"].iloc[hits]])
    source = position.reindex(keys).to_numpy()
    hits, source = hits[~np.isnan(source)], source[~np.isnan(source)].astype(np.int64)
    copied = ["feature_fingerprint", "query_type", "num_permanent_tables_accessed", "num_external_tables_accessed",
              "num_system_tables_accessed", "read_table_ids", "write_table_ids", "mbytes_scanned", "mbytes_spilled",
              "num_joins", "num_scans", "num_aggregations", "compile_duration_ms"]
    for column in copied:
        f.iloc[hits, f.columns.get_loc(column)] = f[column].iloc[source].to_numpy()
    exec_ms = _nums(f, "execution_duration_ms")[source] * np.exp(0.35 * day.rng.standard_normal(len(hits)))
    day.set(hits, name, execution_duration_ms=exec_ms, was_cached=False)
    f.iloc[hits, f.columns.get_loc("cache_source_query_id")] = pd.NA
    return f["arrival_timestamp"].iloc[hits]


def _slow(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    idx = _executed_in(day, inst, start, end)
    factor = day.rng.uniform(1.5, 2.0) * np.exp(0.1 * day.rng.standard_normal(len(idx)))
    day.set(idx, name, execution_duration_ms=_nums(day.frame, "execution_duration_ms")[idx] * factor)
    return day.frame["arrival_timestamp"].iloc[idx]


def _cold_compile(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    # The compile cache lost (a maintenance restart, a patch): every query compiles again, 2-15 s,
    # and the compile is part of its runtime.
    idx = _executed_in(day, inst, start, end)
    extra = day.rng.uniform(2_000, 15_000, len(idx))
    day.set(idx, name, compile_duration_ms=_nums(day.frame, "compile_duration_ms")[idx] + extra,
            execution_duration_ms=_nums(day.frame, "execution_duration_ms")[idx] + extra)
    return day.frame["arrival_timestamp"].iloc[idx]


def _stale_stats(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    # Statistics gone stale after a large load: the planner misjudges every table, queries that read
    # (>= 10 MB) scan 3-5x their MB and run 2-3x longer.
    idx = _executed_in(day, inst, start, end)
    idx = idx[_nums(day.frame, "mbytes_scanned")[idx] >= 10]
    day.set(idx, name, mbytes_scanned=_nums(day.frame, "mbytes_scanned")[idx] * day.rng.uniform(3, 5, len(idx)),
            execution_duration_ms=_nums(day.frame, "execution_duration_ms")[idx] * day.rng.uniform(2, 3, len(idx)))
    return day.frame["arrival_timestamp"].iloc[idx]


def _wlm_abort(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    # A query monitoring rule set too tight: every query past half a second is aborted there.
    idx = _executed_in(day, inst, start, end)
    idx = idx[_nums(day.frame, "execution_duration_ms")[idx] > 500]
    day.set(idx, name, was_aborted=True, execution_duration_ms=np.full(len(idx), 500.0))
    return day.frame["arrival_timestamp"].iloc[idx]


def _of_types(types: tuple[str, ...], factor: tuple[float, float]
              ) -> Callable[[ProbeDay, str, int, pd.Timestamp, pd.Timestamp], pd.Series]:
    """Queries of ``types`` only run ``factor`` slower (one factor per episode, some noise per query)."""
    def change(day: ProbeDay, name: str, inst: int, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
        idx = _executed_in(day, inst, start, end)
        idx = idx[day.frame["query_type"].iloc[idx].isin(types).to_numpy()]
        slower = day.rng.uniform(*factor) * np.exp(0.1 * day.rng.standard_normal(len(idx)))
        day.set(idx, name, execution_duration_ms=_nums(day.frame, "execution_duration_ms")[idx] * slower)
        return day.frame["arrival_timestamp"].iloc[idx]
    return change


@dataclass(frozen=True)
class Probe:
    """One held-out failure mode: its family and how it changes a :class:`ProbeDay`."""

    name: str
    family: str
    apply: Callable[[ProbeDay, str], None]


#: Collective probes first: their episodes reserve instances and times the point probes then avoid.
PROBES: tuple[Probe, ...] = (
    Probe("wait_mid", "collective", _collective(("mid",), 20, _wait)),
    Probe("wait_small", "collective", _collective(("small",), 20, _wait)),
    Probe("arrivals_3x", "collective", _collective(("mid",), 20, _arrivals_3x)),
    Probe("retry_loop", "collective", _collective(("mid", "small"), 10, _retry_loop)),
    Probe("cache_off", "collective", _collective(("busy",), 30, _cache_off)),
    Probe("slow_40min", "collective", _collective(("mid",), 40, _slow)),
    Probe("plan_flip", "point", _plan_flip),
    Probe("new_runaway", "point", _new_runaway),
    Probe("scan_30x", "point", _scan_30x),
    Probe("queue_10min", "point", _queue_10min),
    Probe("compile_3min", "point", _compile_3min),
    Probe("spill_20gb", "point", _spill_20gb),
    Probe("heavy_at_peak", "contextual", _heavy_at_peak),
    Probe("small_as_big", "contextual", _small_as_big),
    Probe("plan_stays_slow", "point", _plan_stays_slow),
    # last: a probe added later consumes the generator's draws after the others', which stay as they were
    Probe("heavy_slower", "point", _heavy_slower),
    Probe("first_spill", "point", _first_spill),
    Probe("spill_beyond_largest", "point", _spill_beyond_largest),
    Probe("work_not_done", "point", _work_not_done),
)

#: A second set, measured on its own copy of the day (the main set takes the free episode slots):
#: the main set's collective probes on busy instances, and collective failure modes of other mechanisms.
MORE_PROBES: tuple[Probe, ...] = (
    Probe("wait_busy", "collective", _collective(("busy",), 20, _wait)),
    Probe("slow_busy", "collective", _collective(("busy",), 40, _slow)),
    Probe("cold_compile", "collective", _collective(("mid",), 30, _cold_compile)),
    Probe("stale_stats", "collective", _collective(("mid", "busy"), 30, _stale_stats)),
    Probe("wlm_abort", "collective", _collective(("busy", "mid"), 20, _wlm_abort)),
    Probe("write_contention", "collective", _collective(("busy", "mid"), 40, _of_types(
        ("insert", "update", "delete", "copy", "ctas"), (2.0, 4.0)))),
    Probe("reads_slower", "collective", _collective(("busy", "mid"), 40, _of_types(("select",), (2.0, 3.0)))),
)

#: The probe sets of ``benchmarks/probes.py --set``.
PROBE_SETS: dict[str, tuple[Probe, ...]] = {"main": PROBES, "more": MORE_PROBES}


def apply_probes(day: pa.Table, history: pa.Table, seed: int, probes: tuple[Probe, ...] = PROBES,
                 sizes: tuple[tuple[str, int, int], ...] = SIZES
                 ) -> tuple[pa.Table, np.ndarray, pd.DataFrame, dict[str, list[int]]]:
    """``(probed day, probe name per row or None, labelled windows, instances per size class)`` of
    ``probes`` applied to ``day`` (what is usual is read from ``history``, the training window)."""
    probed = ProbeDay.from_table(day, history, seed, sizes)
    for probe in probes:
        probe.apply(probed, probe.name)
    table, label = probed.table()
    windows = pd.DataFrame(probed.windows, columns=["instance_id", "window_start", "probe"])
    return table, label, windows, probed.sizes
