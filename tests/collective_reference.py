"""The straightforward per-window collective scoring (issue #16's starting point), kept as an oracle.

:func:`reference_score_windows` is :func:`workbench.analysis.collective.score_windows` as it was
before it was made fast: one Python iteration per window, ``np.nanmedian`` per reference group, one
DataFrame per window. Tests compare the fast code with it on generated multi-day window sets: the
same rows, bit for bit. Do not optimise this file; it is slow on purpose.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from workbench.analysis.collective import (
    SIGNALS,
    CollectiveParams,
    _base_name,
    _carriers_name,
    _count_name,
    share_tail_z,
    window_signals,
)


def _robust(tr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: median, MAD x 1.4826 and count of non-NaN values (NaN medians for empty columns)."""
    n = (~np.isnan(tr)).sum(axis=0)
    if not len(tr):
        nan = np.full(tr.shape[1], np.nan)
        return nan, nan, n
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (serverless cluster size)
        med = np.nanmedian(tr, axis=0)
        mad = np.nanmedian(np.abs(tr - med), axis=0) * 1.4826
    return med, mad, n


def _blend(child: tuple[np.ndarray, np.ndarray, np.ndarray], parent: tuple[np.ndarray, np.ndarray],
           k: float) -> tuple[np.ndarray, np.ndarray]:
    med, mad, n = child
    w = n / (n + k)
    has = n > 0
    return (np.where(has, w * np.nan_to_num(med) + (1 - w) * parent[0], parent[0]),
            np.where(has, w * np.nan_to_num(mad) + (1 - w) * parent[1], parent[1]))


def reference_score_windows(windows: pd.DataFrame, history: pd.DataFrame | None = None,
                            params: CollectiveParams | None = None) -> pd.DataFrame:
    """Score each window of ``windows`` on every signal against the instance's earlier windows.

    Parameters
    ----------
    windows : DataFrame
        ``window_stats`` rows to score (``instance_id``, ``window_start`` and the aggregates).
    history : DataFrame, optional
        Earlier ``window_stats`` rows (may overlap ``windows``; duplicates are dropped). For each
        window only rows of the same instance strictly before it, within ``params.lookback``, count.
    params : CollectiveParams, optional

    Returns
    -------
    DataFrame
        One row per (window, signal) with enough history: ``instance_id``, ``window_start``,
        ``signal``, ``expected``, ``observed``, ``excess``, ``z``, ``score``, ``reason``.
    """
    params = params or CollectiveParams()
    columns = ["instance_id", "window_start", "signal", "expected", "recent", "observed", "excess", "z", "ratio",
               "score", "queries", "reason"]
    if windows is None or not len(windows):
        return pd.DataFrame(columns=columns)
    allw = windows if history is None or not len(history) else pd.concat([history, windows], ignore_index=True)
    obs_all = window_signals(allw).drop_duplicates(["instance_id", "start_ms"], keep="last")
    wanted = window_signals(windows)
    names = list(SIGNALS)
    logged = np.array([SIGNALS[n].log for n in names])
    two_sided = np.array([SIGNALS[n].two_sided for n in names])
    floors = np.array([SIGNALS[n].floor for n in names])
    silent_floors = np.array([SIGNALS[n].floor if SIGNALS[n].silent_floor is None else SIGNALS[n].silent_floor
                              for n in names])
    min_spread = np.where(logged, params.min_spread, params.min_share_spread)
    reasons = np.array([SIGNALS[n].reason for n in names], dtype=object)
    needs_many = np.array([SIGNALS[n].needs_many for n in names])
    is_share = np.array([SIGNALS[n].base is not None for n in names])
    up = np.array([SIGNALS[n].tail == "up" for n in names])
    share_idx = np.flatnonzero(is_share)
    base_cols = [_base_name(names[i]) for i in share_idx]
    mean_idx = np.flatnonzero([SIGNALS[n].carriers is not None for n in names])
    carrier_cols = [_carriers_name(names[i]) for i in mean_idx]
    above = np.array([SIGNALS[n].above or 0.0 for n in names])  # 0: not a quantile
    count_idx = np.flatnonzero([SIGNALS[n].count is not None for n in names])
    count_cols = [_count_name(names[i]) for i in count_idx]
    down = np.where(up, 1.0, -1.0)
    hourly = np.array([SIGNALS[n].empirical == "hour" for n in names])
    recent = np.array([SIGNALS[n].recent for n in names])

    def transform(v: np.ndarray) -> np.ndarray:
        return np.where(logged, np.log1p(np.clip(v, 0, None)), v)

    out: list[pd.DataFrame] = []
    lookback = int(params.lookback.total_seconds() * 1000)
    guard = int(params.recent_guard.total_seconds() * 1000)
    for inst, targets in wanted.groupby("instance_id", sort=True):
        hist = obs_all[obs_all["instance_id"] == inst].sort_values("start_ms")
        times = hist["start_ms"].to_numpy()
        how = hist["how"].to_numpy()
        hod = hist["hod"].to_numpy()
        active = (hist["arrivals"] > 0).to_numpy()
        with np.errstate(invalid="ignore"):
            values = transform(hist[names].to_numpy(float))
        t_obs = targets[names].to_numpy(float)
        h_obs = hist[names].to_numpy(float)
        h_base = hist[base_cols].to_numpy(float)
        t_base = targets[base_cols].to_numpy(float)
        t_arrivals = targets["arrivals"].to_numpy(float)
        # The queries each signal is over: the window's, or the signal's own count (NaN: none).
        t_counts = np.repeat(t_arrivals[:, None], len(names), axis=1)
        t_counts[:, count_idx] = targets[count_cols].to_numpy(float)
        with np.errstate(invalid="ignore"):
            t_many = t_counts >= params.min_queries
        t_carriers = targets[carrier_cols].to_numpy(float)
        # A quantile is moved by the queries above it: judged only when they are enough for a claim.
        t_quantile_ok = (above == 0) | (above * t_arrivals[:, None] >= params.min_excess_queries)
        for j, (t, t_how, t_hod) in enumerate(zip(targets["start_ms"].to_numpy(), targets["how"].to_numpy(),
                                                  targets["hod"].to_numpy(), strict=True)):
            lo = np.searchsorted(times, t - lookback, side="left")
            hi = np.searchsorted(times, t - guard, side="left")
            if hi - lo < params.min_history:
                continue
            now = np.searchsorted(times, t, side="left")
            floor = min((silent_floors[k] for k in range(len(names)) if recent[k]), default=np.inf)
            silent = np.isnan(t_arrivals[j]) and (t_obs[j][recent] == 0).any()
            # The hour before; for a silent window, the hour before its instance fell silent.
            r_hi, anchor = now, t
            if silent:
                while r_hi > 0 and not active[r_hi - 1]:
                    r_hi -= 1
                anchor = times[r_hi] if r_hi < now else t
            r_lo = max(np.searchsorted(times, anchor - guard, side="left"), lo)
            if silent and not (hist["arrivals"].to_numpy()[r_lo:r_hi] >= floor).any():
                continue  # a silent window the hour before gives no excess of a drop's floor
            tr = values[lo:hi]
            med, mad, n = _robust(tr)
            # Same hour of the day on *earlier days*, same hour of the week in *earlier weeks*.
            day_hi = np.searchsorted(times, t - 20 * 3_600_000, side="left")
            week_hi = np.searchsorted(times, t - 6 * 86_400_000, side="left")
            day_sel = hod[lo:day_hi] == t_hod
            week_sel = how[lo:week_hi] == t_how
            parent = _blend(_robust(values[lo:day_hi][day_sel]), (med, mad), params.shrink)
            center, spread = _blend(_robust(values[lo:week_hi][week_sel]), parent, params.shrink)
            share_spread = spread[share_idx]
            spread = np.maximum(spread, min_spread)
            observed = t_obs[j]
            with np.errstate(invalid="ignore"):
                x = transform(observed)
            z = down * (x - center) / spread
            expected = np.where(logged, np.expm1(center), center)
            excess = down * (observed - expected)
            hour_before = np.full(len(names), np.nan)
            if recent.any():
                # The hour before: its median; its spread from changes between adjacent windows of traffic.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    busy = values[r_lo:r_hi][active[r_lo:r_hi]]
                    last_hour = np.nanmedian(busy, axis=0) if len(busy) else np.full(len(names), np.nan)
                    step = np.median(np.diff(times)) if len(times) > 1 else 0
                    changes = [values[k] - values[k - 1] for k in range(lo + 1, hi)
                               if times[k] - times[k - 1] == step and active[k] and active[k - 1]]
                    local = (np.nanmedian(np.abs(np.array(changes)), axis=0) * 1.4826 / np.sqrt(2.0)
                             if changes else np.full(len(names), np.nan))
                local = np.maximum(np.where(np.isnan(local), np.inf, local), params.min_spread)
                # A drop that goes on: of the rows r since which every window is a drop against the hour
                # before r (the floor, and z_threshold times the local spread), the highest such level.
                memory = params.lookback if params.drop_memory is None else params.drop_memory
                memory = int(memory.total_seconds() * 1000)
                for r in range(max(lo, np.searchsorted(times, t - memory, side="left")), now):
                    h_lo = np.searchsorted(times, times[r] - guard, side="left")
                    rows = [k for k in range(h_lo, r) if active[k]]
                    if not rows:
                        continue
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        level = np.nanmedian(values[rows], axis=0)
                    for c in np.flatnonzero(recent):
                        if np.isnan(level[c]):
                            continue
                        broke_off = all(
                            down[c] * (h_obs[k, c] - np.expm1(level[c]))
                            >= (silent_floors[c] if h_obs[k, c] == 0 else floors[c])
                            and down[c] * (values[k, c] - level[c]) >= params.z_threshold * local[c]
                            for k in range(r, now) if not np.isnan(h_obs[k, c]))
                        if broke_off and not (-down[c] * level[c] <= -down[c] * last_hour[c]):
                            last_hour[c] = level[c]
                hour_before = np.where(recent, np.expm1(last_hour), np.nan)
                with np.errstate(invalid="ignore"):
                    z = np.where(recent, np.minimum(z, down * (x - last_hour) / local), z)
                    excess = np.where(recent, np.minimum(excess, down * (observed - np.expm1(last_hour))), excess)
            z = np.where(two_sided, np.abs(z), z)
            excess = np.where(two_sided, np.abs(excess), excess)
            ratio = excess / np.where(observed == 0, silent_floors, floors)
            if len(share_idx):
                # Shares: the over-dispersed binomial tail, p0 kept off 0 and 1 by half a query
                # of the reference (a share never seen is not impossible), and the excess must
                # also be at least min_excess_queries queries (a collective claim).
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore", RuntimeWarning)
                    n_ref = np.nansum(h_base[lo:hi], axis=0)
                    n_typ = np.nanmedian(h_base[lo:hi], axis=0)
                eps = 0.5 / np.maximum(n_ref, 1.0)
                p0 = np.clip(center[share_idx], eps, 1.0 - eps)
                n_now = t_base[j]
                share_z = share_tail_z(observed[share_idx], n_now, p0, share_spread, n_typ, up[share_idx])
                sign = np.where(up[share_idx], 1.0, -1.0)
                share_excess = sign * (observed[share_idx] - p0)
                z[share_idx] = share_z
                expected[share_idx] = p0
                excess[share_idx] = share_excess
                ratio[share_idx] = np.minimum(share_excess / floors[share_idx],
                                              share_excess * n_now / params.min_excess_queries)
            # Means: the excess must take at least min_excess_queries queries as long as the
            # window's longest (else two or three huge queries are the story, not the window).
            ratio[mean_idx] = np.minimum(ratio[mean_idx],
                                         excess[mean_idx] * t_carriers[j] / params.min_excess_queries)
            # Empirical tail: the z above assumes a shape (log-normal spread, binomial); a value that
            # the instance's own reference reached in more than max_history_share of its windows is
            # ordinary for it whatever the z says (a median that flips between two modes).
            with np.errstate(invalid="ignore"):
                dev_now = np.where(two_sided, np.abs(x - center), np.where(up, x - center, center - x))
                dev_hist = np.where(two_sided, np.abs(tr - center), np.where(up, tr - center, center - tr))
                as_extreme = np.nansum(dev_hist >= dev_now, axis=0) / np.maximum(n, 1)
                if hourly.any():  # against the same hour of the day on earlier days only
                    same = values[lo:day_hi][day_sel]
                    dev_same = np.where(two_sided, np.abs(same - center), np.where(up, same - center, center - same))
                    as_extreme = np.where(hourly, np.nansum(dev_same >= dev_now, axis=0)
                                          / np.maximum((~np.isnan(same)).sum(axis=0), 1), as_extreme)
            ratio = np.minimum(ratio, params.max_history_share / np.maximum(as_extreme, 1e-12))
            score = np.minimum(z / params.z_threshold, ratio)
            ok = (n >= params.min_history) & ~np.isnan(observed) & ~np.isnan(score) & (t_many[j] | ~needs_many)
            ok &= is_share | (day_hi > lo)  # a level needs an earlier day in its reference (its daily cycle)
            ok &= t_quantile_ok[j]
            if not ok.any():
                continue
            out.append(pd.DataFrame({
                "instance_id": int(inst), "window_start": pd.Timestamp(int(t), unit="ms", tz="UTC"),
                "signal": np.array(names, dtype=object)[ok], "expected": expected[ok], "recent": hour_before[ok],
                "observed": observed[ok],
                "excess": excess[ok], "z": z[ok], "ratio": ratio[ok], "score": score[ok], "queries": t_counts[j][ok],
                "reason": reasons[ok]}))
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns]
