"""A synthetic, Redset-like query log with labelled anomalies.

The log reproduces the statistics of ``redset-stats.md`` section 9 closely enough for the replay,
the stream analytics and the models to behave as they would on the real data:

* **Fleet shape.** Per-instance volume is log-normal (quantile-spaced, so a few instances hold most
  queries); about a quarter of the instances are serverless (``cluster_size`` NULL, few active
  hours a day) and some small instances live only a day or two. Provisioned sizes are chosen so
  the query-weighted mean is about 6 nodes.
* **Time.** Fleet hour-of-day profile with a 14-18 h peak about 2.2x the 03 h trough, and a weak
  day-of-week cycle.
* **Repetition.** Each instance owns a Zipf-distributed pool of fingerprints (64-hex strings) per
  query type; about 15 % of sessions run a fresh, ad-hoc fingerprint. Queries arrive in bursts of
  one user repeating one fingerprint a few seconds apart, so about two thirds of all queries have a
  same-user, same-fingerprint neighbour within 60 s.
* **Mix.** ``select`` about 22 %, result-cache hits about 10 % (typed ``other``, NULL fingerprint
  and table counts, ``cache_source_query_id`` = an earlier ``select`` of the same instance and user),
  ``copy`` about 11 %, ``unload`` about 0.5 %, the rest writes and maintenance.
* **Cost.** Every fingerprint has a fixed *base cost* (execution, scan, plan shape, tables, compile
  behaviour). A row's execution time is ``base * cluster factor * hour-load factor * LogNormal(0,
  0.35)``, so it is learnable from pre-execution features. Base costs follow three profiles:
  *light* (overhead plus ~0.4 ms per MB scanned), *cpu* (1.5 s and more with little scanned data)
  and *io* (tens of GB to TB scanned fast). Compile time is mostly a few ms with a heavy tail,
  queueing hits a few % of queries (more at peak hours), spill rises with scan size and about
  0.5 % of queries abort.

Injected anomalies (``label_anomaly`` true, ``label_kind`` one of :data:`ANOMALY_KINDS`), each about
a quarter of ``anomaly_rate``. They are drawn only from non-cached, non-aborted queries of pooled
(repeating) fingerprints whose expected execution time is below 5 s, and the affected row's
execution time becomes ``max(expected * U(20, 100), U(3 s, 30 s))`` -- at least 20x what its
pre-execution features predict:

``slow_fingerprint``
    One query of a normally fast fingerprint runs 20-100x slower; nothing else changes.
``spill_storm``
    A run of 3-12 consecutive queries of one instance spill 2-20x their scan (at least 1 GB) to
    disk and run 20-100x slower.
``queue_storm``
    A run of 3-12 consecutive queries of one instance wait in the WLM queue for 3-10x their
    (already 20-100x slower) execution time and at least 60 s, so ``queue >> exec``.
``scan_explosion``
    One query scans 50-1000x its fingerprint's usual volume and runs 20-100x slower.

The stress pack (``kinds="all"``, :data:`EXTRA_KINDS`) adds kinds modelled on real Redshift
failure modes, in three families (:data:`KIND_FAMILY`): point (``runaway_new_query``: a
never-seen fingerprint runs 10-60 minutes; ``plan_regression``: a repeating query 5-20x slower,
often spilling; ``copy_stall``: a COPY/UNLOAD 3-30 minutes longer), contextual
(``cross_instance_heavy``: an ETL-sized statement on an instance where that query is light;
``concurrency_surge``: an hour of an instance's arrivals squeezed into 20 minutes, each waiting and
running longer) and collective (``wlm_saturation``: every query waits seconds more for 20-50
minutes; ``spill_wave``; ``cache_miss_storm``: result-cache hits become executions;
``resize_slowdown``: half the nodes, held then slower). Window kinds (:data:`WINDOW_KINDS`) are
labelled per query and per 10-minute window (at least 10 affected queries) in the sidecar
:func:`window_labels_path`. The stress pack draws from its own seed streams, so the classic log's
bytes do not change.

Output is written day by day with :class:`pyarrow.parquet.ParquetWriter` (zstd, row groups of at
most 256k rows), columns in :data:`~workbench.data.schema.REDSET_SCHEMA` order followed by the label
columns, sorted by ``(arrival_timestamp, query_id)``. Every random draw comes from a
``PCG64`` generator seeded from ``SeedSequence(seed)``, so the same arguments produce the same bytes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.schema import LABEL_SCHEMA, REDSET_SCHEMA, kind_names
from workbench.exceptions import ConfigurationError

__all__ = [
    "ALL_KINDS",
    "ANOMALY_KINDS",
    "EXTRA_KINDS",
    "KIND_FAMILY",
    "MIN_WINDOW_ROWS",
    "QUERY_KINDS",
    "QUERY_TYPES",
    "WINDOW_KINDS",
    "GenerateSummary",
    "generate",
    "resolve_kinds",
    "window_labels",
    "window_labels_path",
]

logger = logging.getLogger(__name__)

ANOMALY_KINDS: tuple[str, ...] = ("slow_fingerprint", "spill_storm", "queue_storm", "scan_explosion")
#: Kinds of the stress pack (``kinds="all"``), after the classic ones; family per kind.
EXTRA_KINDS: tuple[str, ...] = (
    "runaway_new_query", "plan_regression", "copy_stall", "cross_instance_heavy",
    "concurrency_surge", "wlm_saturation", "spill_wave", "cache_miss_storm", "resize_slowdown",
)
ALL_KINDS: tuple[str, ...] = ANOMALY_KINDS + EXTRA_KINDS
KIND_FAMILY: dict[str, str] = {
    "slow_fingerprint": "point", "spill_storm": "point", "queue_storm": "point", "scan_explosion": "point",
    "runaway_new_query": "point", "plan_regression": "point", "copy_stall": "point",
    "cross_instance_heavy": "contextual", "concurrency_surge": "contextual",
    "wlm_saturation": "collective", "spill_wave": "collective", "cache_miss_storm": "collective",
    "resize_slowdown": "collective",
}
#: Kinds labelled per 10-minute window as well as per query (many queries together).
WINDOW_KINDS: tuple[str, ...] = ("concurrency_surge", "wlm_saturation", "spill_wave", "cache_miss_storm",
                                 "resize_slowdown")
#: Kinds anomalous query by query (each labelled row deviates on its own).
QUERY_KINDS: tuple[str, ...] = tuple(k for k in ALL_KINDS if k not in WINDOW_KINDS)
WINDOW_MS = 600_000

QUERY_TYPES: tuple[str, ...] = (
    "select", "insert", "copy", "delete", "update", "ctas", "analyze", "vacuum", "other", "unload",
)
_T = {name: code for code, name in enumerate(QUERY_TYPES)}

#: Shares of *non-cached* queries per type (provisioned / serverless), from redset-stats section 2.
_MIX_PROVISIONED = np.array([22.0, 25.0, 11.0, 8.0, 5.0, 3.0, 6.0, 2.0, 7.5, 0.5])
_MIX_SERVERLESS = np.array([27.0, 38.0, 13.5, 9.5, 3.0, 2.0, 3.0, 1.0, 2.5, 0.5])
_MIX_PROVISIONED /= _MIX_PROVISIONED.sum()
_MIX_SERVERLESS /= _MIX_SERVERLESS.sum()

#: Fleet queries per hour of day (thousands), redset-stats section 8: trough 03 h, peak 16 h.
_HOUR_PROFILE = np.array(
    [165, 160, 152, 147, 150, 155, 160, 165, 170, 172, 175, 178,
     180, 180, 263, 320, 332, 299, 281, 240, 210, 190, 178, 170], dtype=float
)
#: Fleet queries per day of week, Monday first (thousands), redset-stats section 8.
_WEEKDAY_PROFILE = np.array([210, 209, 181, 156, 201, 216, 214], dtype=float)

_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
_ROW_GROUP = 262_144

_CACHE_SHARE_BIG = 0.12     # big (dashboard-heavy) instances
_CACHE_SHARE_SMALL = 0.02
_FRESH_SHARE = 0.15         # sessions running a never-seen fingerprint
_SINGLE_SHARE = 0.72        # sessions of one query
_BURST_GAP_S = 8.0          # mean gap inside a session
_OWNER_SHARE = 0.9          # sessions run by the fingerprint's owner
_ZIPF_S = 1.5
_P_CPU = 0.065              # share of non-top fingerprints with the cpu profile
_P_IO = 0.008               # ... and with the io profile
_P_ABORT = 0.005
_P_QUEUE = 0.035
_EXEC_CAP_MS = 6 * 3_600_000
_FAST_MS = 5_000.0          # anomalies are drawn from fingerprints expected below this


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`generate` wrote."""

    path: Path
    rows: int
    days: int
    instances: int
    anomalies: int
    seconds: float
    first_arrival: dt.datetime
    last_arrival: dt.datetime

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.rows:,} queries, {self.instances} instances, {self.days} days "
            f"({self.first_arrival:%Y-%m-%d %H:%M} .. {self.last_arrival:%Y-%m-%d %H:%M} UTC), "
            f"{self.anomalies:,} labelled anomalies, {self.seconds:.1f} s"
        )


@dataclass
class _Templates:
    """Struct of arrays: one entry per fingerprint (its fixed base cost and plan)."""

    qtype: np.ndarray
    joins: np.ndarray
    scans: np.ndarray
    aggs: np.ndarray
    n_perm: np.ndarray
    n_ext: np.ndarray
    n_sys: np.ndarray
    read_ids: np.ndarray      # object: str | None
    write_ids: np.ndarray     # object: str | None
    database: np.ndarray
    owner: np.ndarray         # index into the instance's users
    base_exec: np.ndarray     # ms
    base_scan: np.ndarray     # MB
    compile_p: np.ndarray
    compile_base: np.ndarray  # ms
    fingerprint: np.ndarray   # object: 64-hex str

    def concat(self, other: _Templates) -> _Templates:
        return _Templates(**{
            name: np.concatenate([getattr(self, name), getattr(other, name)])
            for name in self.__dataclass_fields__
        })


@dataclass
class _Instance:
    instance_id: int
    serverless: bool
    cluster_size: int | None
    weight: float
    cache_share: float
    users: np.ndarray
    user_p: np.ndarray
    databases: np.ndarray
    table_base: int
    n_tables: int
    first_day: int
    last_day: int
    diurnality: float
    pool: _Templates
    pool_by_type: list[np.ndarray]  # per type: indices into pool, in Zipf rank order
    zipf_by_type: list[np.ndarray]
    next_query_id: int


def _zipf(k: int) -> np.ndarray:
    w = 1.0 / np.arange(1, k + 1, dtype=float) ** _ZIPF_S
    return w / w.sum()


def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(size))


def _id_lists(rng: np.random.Generator, counts: np.ndarray, base: int, n_tables: int) -> np.ndarray:
    """Comma-separated table ids (``None`` for zero tables), one string per count."""
    # Python strings: str.join over a NumPy array of strings lost an exception a signal handler raised in it
    # (1 in 50 in a test), so `kill` of `workbench generate` went unheard and the log was written to its end.
    flat = (base + rng.integers(0, n_tables, int(counts.sum()))).astype(str).tolist()
    out = np.empty(len(counts), dtype=object)
    ends = np.cumsum(counts)
    starts = ends - counts
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        out[i] = ",".join(flat[s:e]) if e > s else None
    return out


def _make_templates(rng: np.random.Generator, inst: _Instance, qtype: np.ndarray,
                    rank: np.ndarray) -> _Templates:
    """Fingerprints of the given types; ``rank`` < 5 (a pool's most frequent) are always light."""
    n = len(qtype)
    sel, ins, copy_, dele, upd, ctas, ana, vac, oth, unl = (qtype == _T[t] for t in QUERY_TYPES)
    dml = ins | dele | upd | ctas
    reads = sel | dml | oth

    joins = np.where(sel, rng.poisson(1.2, n), np.where(dml, rng.poisson(0.45, n), 0))
    scans = np.where(reads, joins + 1 + rng.poisson(0.15, n), np.where(unl, 1, 0))
    aggs = np.where(sel, rng.poisson(3.0, n), np.where(dml, rng.poisson(2.4, n),
                    np.where(oth | ana, rng.poisson(0.8, n), 0)))
    # Profiles (only for plan-bearing types, never for a pool's top fingerprints).
    u = rng.random(n)
    eligible = reads & (rank >= 5)
    cpu = eligible & (u < _P_CPU)
    io = eligible & (u >= _P_CPU) & (u < _P_CPU + _P_IO)
    aggs = np.where(cpu, np.maximum(aggs, 2), aggs)
    joins = np.where(io, np.maximum(joins, 1), joins)
    scans = np.where(io, np.maximum(scans, joins + 1), scans)
    complexity = joins + scans + aggs

    # Light profile: overhead plus a per-MB rate growing with plan complexity.
    overhead = _lognormal(rng, 15.0, 1.0, n)
    zero_scan = rng.random(n) < np.where(sel, 0.2, np.where(dml, 0.4, 0.8))
    scan = np.where(zero_scan | ~reads, 0.0, _lognormal(rng, 500.0, 2.3, n))
    # Frequently repeated fingerprints are not the multi-TB ones (that tail would dominate the log).
    scan = np.minimum(scan, np.where(rank < 20, 50_000.0, 5_000_000.0))
    rate = _lognormal(rng, 0.3, 0.9, n) * (1.0 + 0.15 * complexity)
    exec_ms = overhead + rate * scan
    # cpu: long-running, little data (ratio well above 20 ms/MB).
    cpu_exec = np.maximum(_lognormal(rng, 3_000.0, 1.6, n), 1_800.0)
    cpu_scan = np.maximum(cpu_exec / np.maximum(_lognormal(rng, 60.0, 0.8, n), 35.0), 1.0)
    exec_ms = np.where(cpu, cpu_exec, exec_ms)
    scan = np.where(cpu, cpu_scan, scan)
    # io: huge scans at a fast rate (ratio well below 0.061 ms/MB).
    io_scan = np.maximum(_lognormal(rng, 200_000.0, 1.5, n), 40_000.0)
    io_exec = np.maximum(io_scan * np.minimum(_lognormal(rng, 0.02, 0.5, n), 0.04), 1_800.0)
    exec_ms = np.where(io, io_exec, exec_ms)
    scan = np.where(io, io_scan, scan)
    # Copy / unload / maintenance.
    copy_scan = np.where(rng.random(n) < 0.45, 0.0, _lognormal(rng, 150.0, 1.5, n))
    # A pool's top loads are small and frequent (< 500 ms); the long ones come from the tail.
    copy_exec = np.where(rank < 5, _lognormal(rng, 120.0, 0.5, n), _lognormal(rng, 2_000.0, 1.4, n))
    exec_ms = np.where(copy_, copy_exec, exec_ms)
    scan = np.where(copy_, copy_scan, scan)
    exec_ms = np.where(unl, _lognormal(rng, 3_000.0, 1.2, n), exec_ms)
    scan = np.where(unl, _lognormal(rng, 300.0, 1.5, n), scan)
    exec_ms = np.where(ana, _lognormal(rng, 60.0, 1.5, n), exec_ms)
    scan = np.where(ana, _lognormal(rng, 5.0, 1.5, n), scan)
    exec_ms = np.where(vac, _lognormal(rng, 2_000.0, 1.8, n), exec_ms)

    system_only = rng.random(n) < 0.03
    n_perm = np.where(copy_ | ins | dele | upd | ctas | ana | vac, 1, 0)
    n_perm = np.where(sel | oth | ctas | ins, np.maximum(n_perm, scans), n_perm)
    n_perm = np.where(system_only & (sel | oth), 0, n_perm)
    n_sys = np.where(system_only & (sel | oth), 1 + rng.poisson(0.5, n), 0)
    n_ext = np.where((sel | ctas) & (rng.random(n) < 0.02), 1, 0)
    n_write = np.where(ins | copy_ | dele | upd | ctas | vac | ana, 1, 0)
    n_read = np.where(copy_ | vac | ana, 0, n_perm)

    raw = rng.bytes(32 * n)
    fingerprint = np.array([raw[i * 32:(i + 1) * 32].hex() for i in range(n)], dtype=object)
    owner = rng.choice(len(inst.users), n, p=inst.user_p)
    return _Templates(
        qtype=qtype.astype(np.int8),
        joins=joins.astype(np.int64), scans=scans.astype(np.int64), aggs=aggs.astype(np.int64),
        n_perm=n_perm.astype(np.int64), n_ext=n_ext.astype(np.int64), n_sys=n_sys.astype(np.int64),
        read_ids=_id_lists(rng, n_read, inst.table_base, inst.n_tables),
        write_ids=_id_lists(rng, n_write, inst.table_base, inst.n_tables),
        database=rng.choice(inst.databases, n),
        owner=owner,
        base_exec=np.minimum(exec_ms, np.where(rank < 20, 60_000.0, _EXEC_CAP_MS / 4)),
        base_scan=scan,
        compile_p=np.full(n, 0.2),
        compile_base=_lognormal(rng, 3_000.0, 1.5, n),
        fingerprint=fingerprint,
    )


def _setup_instances(rng: np.random.Generator, *, n: int, days: int, rows_per_day: int) -> list[_Instance]:
    """Fleet layout: volumes, tiers, sizes, users, tables and fingerprint pools."""
    # Quantile-spaced log-normal volumes keep the fleet shape stable across seeds.
    z = np.array([math.sqrt(2) * _erfinv(2 * (k + 0.5) / n - 1) for k in range(n)])
    weights = np.exp(2.0 * z)[::-1]          # rank 0 = biggest
    serverless_ranks = set(range(n // 2 + 1, n, 2)) if n >= 4 else set()
    sizes_cycle = [6, 5, 8, 4, 6, 10, 2, 7, 3, 6, 4, 8]
    ids = rng.permutation(np.arange(1, max(200, 4 * n) + 1))[:n]
    total = rows_per_day * days
    instances: list[_Instance] = []
    provisioned_rank = 0
    for rank in range(n):
        serverless = rank in serverless_ranks
        cluster_size = None
        if not serverless:
            cluster_size = sizes_cycle[provisioned_rank % len(sizes_cycle)]
            provisioned_rank += 1
        share = weights[rank] / weights.sum()
        expected = total * share
        n_users = int(1 + min(rng.poisson(max(expected, 1.0) ** 0.33 / 2), 60))
        users = np.sort(rng.choice(np.arange(100, 400_000), n_users, replace=False))
        user_p = _zipf(n_users)
        first, last = 0, days - 1
        if rank >= max(2, n // 4) and days > 1 and rng.random() < 0.4:
            span = int(rng.integers(1, max(2, days // 2 + 1)))
            first = int(rng.integers(0, days - span + 1))
            last = first + span - 1
        inst = _Instance(
            instance_id=int(ids[rank]),
            serverless=serverless,
            cluster_size=cluster_size,
            weight=float(weights[rank]),
            cache_share=_CACHE_SHARE_BIG if rank < max(1, n // 4) else _CACHE_SHARE_SMALL,
            users=users.astype(np.int64),
            user_p=user_p,
            databases=rng.integers(1, 40, 1 + int(rng.integers(0, 3))).astype(np.int64),
            table_base=int(rng.integers(1, 10_000)) * 1000,
            n_tables=int(min(20 + expected ** 0.5, 5_000)),
            first_day=first,
            last_day=last,
            diurnality=float(rng.uniform(0.8, 1.2)) if rank < 3 else float(rng.uniform(0.4, 1.6)),
            pool=None,  # type: ignore[arg-type]
            pool_by_type=[],
            zipf_by_type=[],
            next_query_id=int(rng.integers(1_000_000, 900_000_000)),
        )
        mix = _MIX_SERVERLESS if serverless else _MIX_PROVISIONED
        qtypes, ranks = [], []
        for t in range(len(QUERY_TYPES)):
            k = int(np.clip(expected * (1 - inst.cache_share) * mix[t] * 0.004, 3, 600))
            qtypes.append(np.full(k, t))
            ranks.append(np.arange(k))
        pool = _make_templates(rng, inst, np.concatenate(qtypes), np.concatenate(ranks))
        inst.pool = pool
        offset = 0
        for t in range(len(QUERY_TYPES)):
            k = len(qtypes[t])
            inst.pool_by_type.append(np.arange(offset, offset + k))
            inst.zipf_by_type.append(_zipf(k))
            offset += k
        instances.append(inst)
    return instances


def _erfinv(y: float) -> float:
    """Inverse error function (Newton on :func:`math.erf`); enough for quantile spacing."""
    x = 0.0
    for _ in range(60):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def _instance_day(rng: np.random.Generator, inst: _Instance, n_total: int,
                  hour_weights: np.ndarray) -> dict[str, np.ndarray] | None:
    """All queries of one instance on one day, unsorted, times in µs since midnight."""
    mix = _MIX_SERVERLESS if inst.serverless else _MIX_PROVISIONED
    n_cached = int(rng.binomial(n_total, inst.cache_share))
    n_nc = n_total - n_cached
    if n_nc <= 0:
        return None
    mean_size = _SINGLE_SHARE + (1 - _SINGLE_SHARE) * 4.0
    n_bursts = max(1, round(n_nc / mean_size))
    sizes = np.where(rng.random(n_bursts) < _SINGLE_SHARE, 1,
                     1 + rng.geometric(1 / 3, n_bursts)).clip(1, 300)
    btype = rng.choice(len(QUERY_TYPES), n_bursts, p=mix)
    fresh = rng.random(n_bursts) < _FRESH_SHARE
    btpl = np.empty(n_bursts, dtype=np.int64)
    for t in range(len(QUERY_TYPES)):
        m = (btype == t) & ~fresh
        btpl[m] = inst.pool_by_type[t][rng.choice(len(inst.pool_by_type[t]), int(m.sum()),
                                                  p=inst.zipf_by_type[t])]
    n_pool = len(inst.pool.qtype)
    templates = inst.pool
    n_fresh = int(fresh.sum())
    if n_fresh:
        templates = inst.pool.concat(
            _make_templates(rng, inst, btype[fresh], np.full(n_fresh, 1_000)))
        btpl[fresh] = n_pool + np.arange(n_fresh)
    by_owner = rng.random(n_bursts) < _OWNER_SHARE
    buser = np.where(by_owner, templates.owner[btpl],
                     rng.choice(len(inst.users), n_bursts, p=inst.user_p))
    bstart = (rng.choice(24, n_bursts, p=hour_weights) * _HOUR_US
              + rng.integers(0, _HOUR_US, n_bursts))

    # Expand sessions into queries.
    row_burst = np.repeat(np.arange(n_bursts), sizes)
    n = len(row_burst)
    first_of_burst = np.r_[0, np.cumsum(sizes)[:-1]]
    gaps = np.clip(rng.exponential(_BURST_GAP_S, n), 0.05, 55.0) * 1e6
    gaps[first_of_burst] = 0.0
    cum = np.cumsum(gaps)
    offset = cum - cum[first_of_burst][row_burst]
    ts = bstart[row_burst] + offset.astype(np.int64)
    keep = ts < _DAY_US
    row_burst, ts = row_burst[keep], ts[keep]
    n = len(ts)
    tpl = btpl[row_burst]
    fresh_row = tpl >= n_pool
    user = buser[row_burst]
    hour = ts // _HOUR_US

    cluster_factor = 1.0 if inst.cluster_size is None else (6.0 / inst.cluster_size) ** 0.4
    hour_factor = (_HOUR_PROFILE[hour] / _HOUR_PROFILE.mean()) ** 0.3
    expected = templates.base_exec[tpl] * cluster_factor * hour_factor
    exec_ms = expected * np.exp(0.35 * rng.standard_normal(n))
    scan = np.rint(templates.base_scan[tpl] * np.exp(0.25 * rng.standard_normal(n)))
    compiled = rng.random(n) < np.where(fresh_row, 0.8, templates.compile_p[tpl])
    compile_ms = np.where(compiled, templates.compile_base[tpl] * np.exp(0.5 * rng.standard_normal(n)),
                          rng.integers(0, 6, n))
    load = _HOUR_PROFILE[hour] / _HOUR_PROFILE.max()
    queued = rng.random(n) < _P_QUEUE * 1.5 * load
    long_wait = rng.random(n) < 0.6
    queue_ms = np.where(queued, np.where(long_wait, _lognormal(rng, 4_000.0, 2.0, n),
                                         _lognormal(rng, 200.0, 1.0, n)), 0.0)
    log_scan = np.log10(np.maximum(scan, 1.0))
    p_spill = np.where(scan > 0, 0.011 + 0.33 / (1 + np.exp(-(log_scan - 4.3) * 2.2)), 0.0)
    spilled = rng.random(n) < p_spill
    spill = np.where(spilled, np.rint(scan * _lognormal(rng, 0.2, 1.5, n)) + 1, 0.0)
    exec_ms = exec_ms * np.where(spilled, 1.0 + 0.5 * np.minimum(spill / np.maximum(scan, 1), 4), 1.0)
    aborted = rng.random(n) < _P_ABORT
    exec_ms = np.where(aborted, exec_ms * np.where(rng.random(n) < 0.5, 0.01, rng.random(n)), exec_ms)
    exec_ms = np.minimum(exec_ms, _EXEC_CAP_MS)

    qtype = templates.qtype[tpl].astype(np.int64)
    rows: dict[str, np.ndarray] = {
        "ts": ts, "user": inst.users[user], "database": templates.database[tpl],
        "compile": np.rint(compile_ms), "queue": np.rint(queue_ms), "exec": np.rint(exec_ms),
        "fingerprint": templates.fingerprint[tpl], "aborted": aborted,
        "cached": np.zeros(n, dtype=bool), "source": np.full(n, -1, dtype=np.int64),
        "qtype": qtype, "n_perm": templates.n_perm[tpl], "n_ext": templates.n_ext[tpl],
        "n_sys": templates.n_sys[tpl], "read_ids": templates.read_ids[tpl],
        "write_ids": templates.write_ids[tpl], "scan": scan, "spill": spill,
        "joins": templates.joins[tpl], "scans": templates.scans[tpl], "aggs": templates.aggs[tpl],
        "expected": expected,
        "eligible": ~fresh_row & ~aborted & (expected < _FAST_MS) & (exec_ms > 0),
        "fresh": fresh_row & ~aborted,
    }

    # Result-cache hits: a later copy of an earlier select by the same user.
    selects = np.flatnonzero((qtype == _T["select"]) & ~aborted)
    if n_cached and len(selects):
        src = rng.choice(selects, n_cached)
        delay = np.maximum(_lognormal(rng, 600e6, 1.5, n_cached), 1e6).astype(np.int64)
        room = _DAY_US - 1 - ts[src]
        late = delay > room
        delay[late] = np.maximum((room[late] * rng.uniform(0.1, 0.99, int(late.sum()))).astype(np.int64), 1)
        c_ts = ts[src] + delay
        ok = c_ts < _DAY_US
        src, c_ts = src[ok], c_ts[ok]
        m = len(src)
        zeros = np.zeros(m)
        cached_rows = {
            "ts": c_ts, "user": rows["user"][src], "database": rows["database"][src],
            "compile": zeros, "queue": zeros, "exec": np.rint(rng.exponential(2.0, m)),
            "fingerprint": np.full(m, None, dtype=object), "aborted": np.zeros(m, dtype=bool),
            "cached": np.ones(m, dtype=bool), "source": src,
            "qtype": np.full(m, _T["other"]), "n_perm": np.full(m, -1), "n_ext": np.full(m, -1),
            "n_sys": np.full(m, -1), "read_ids": np.full(m, None, dtype=object),
            "write_ids": np.full(m, None, dtype=object), "scan": zeros, "spill": zeros,
            "joins": np.full(m, -1), "scans": np.full(m, -1), "aggs": np.full(m, -1),
            "expected": zeros, "eligible": np.zeros(m, dtype=bool), "fresh": np.zeros(m, dtype=bool),
        }
        rows = {key: np.concatenate([rows[key], cached_rows[key]]) for key in rows}
        n = len(rows["ts"])

    # query_id: unique per instance, increasing overall but locally out of arrival order.
    key = np.argsort(np.argsort(rows["ts"], kind="stable"), kind="stable") + rng.normal(0, 25, n)
    position = np.empty(n, dtype=np.int64)
    position[np.argsort(key, kind="stable")] = np.arange(n)
    qid = inst.next_query_id + position
    inst.next_query_id += n + int(rng.integers(1, 5_000))
    rows["query_id"] = qid
    rows["source"] = np.where(rows["source"] >= 0, qid[np.maximum(rows["source"], 0)], -1)
    rows["instance"] = np.full(n, inst.instance_id, dtype=np.int64)
    rows["cluster_size"] = np.full(n, -1 if inst.cluster_size is None else inst.cluster_size)
    return rows


def _inject_anomalies(rng: np.random.Generator, rows: dict[str, np.ndarray], rate: float,
                      kinds: tuple[str, ...] = ANOMALY_KINDS) -> np.ndarray:
    """Mark and modify anomalous rows in place; returns the kind code per row (-1 = none).

    ``kinds`` are the classic kinds to inject (a subset of :data:`ANOMALY_KINDS`); codes index
    :data:`ALL_KINDS`.
    """
    n = len(rows["ts"])
    kind = np.full(n, -1, dtype=np.int8)
    eligible = rows["eligible"].copy()
    n_anomalies = int(rng.binomial(n, rate)) if rate > 0 and kinds else 0
    if n_anomalies == 0 or not eligible.any():
        return kind
    counts = rng.multinomial(n_anomalies, [1 / len(kinds)] * len(kinds))
    inst_order = np.argsort(rows["instance"], kind="stable")   # rows are time-sorted already
    where = np.empty(n, dtype=np.int64)
    where[inst_order] = np.arange(n)
    for name, count in zip(kinds, counts.tolist(), strict=True):
        code = ALL_KINDS.index(name)
        chosen: list[int] = []
        if name in ("slow_fingerprint", "scan_explosion"):
            candidates = np.flatnonzero(eligible)
            take = min(count, len(candidates))
            chosen = rng.choice(candidates, take, replace=False).tolist()
        else:
            while len(chosen) < count:
                candidates = np.flatnonzero(eligible)
                if not len(candidates):
                    break
                anchor = int(rng.choice(candidates))
                run = min(int(rng.integers(3, 13)), count - len(chosen))
                window = inst_order[where[anchor]:where[anchor] + 4 * run]
                window = window[(rows["instance"][window] == rows["instance"][anchor]) & eligible[window]]
                picked = window[:run].tolist()
                chosen.extend(picked)
                eligible[picked] = False
        idx = np.asarray(chosen, dtype=np.int64)
        if not len(idx):
            continue
        eligible[idx] = False
        kind[idx] = code
        m = len(idx)
        slow = np.maximum(rows["expected"][idx] * rng.uniform(20, 100, m), rng.uniform(3_000, 30_000, m))
        rows["exec"][idx] = np.rint(np.minimum(np.maximum(slow, rows["exec"][idx]), _EXEC_CAP_MS))
        if name == "spill_storm":
            rows["spill"][idx] = np.rint(np.maximum(rows["scan"][idx], 1_000) * rng.uniform(2, 20, m))
        elif name == "queue_storm":
            rows["queue"][idx] = np.rint(np.maximum(rows["exec"][idx] * rng.uniform(3, 10, m), 60_000))
        elif name == "scan_explosion":
            rows["scan"][idx] = np.rint(np.maximum(rows["scan"][idx], 10) * rng.uniform(50, 1_000, m))
    return kind


# --- the stress pack ------------------------------------------------------------------------------
_MIN = 60_000_000  # µs
#: The analytics windows' length: a labelled window (the generator's, a sidecar's) starts on its grid.
_WINDOW_US = 10 * _MIN
#: Affected queries that make an instance's 10-minute window a labelled collective anomaly.
MIN_WINDOW_ROWS = 10


def _runaway_new_query(rng: np.random.Generator, rows: dict[str, np.ndarray], idx: np.ndarray) -> None:
    """A never-seen fingerprint runs for 10-60 minutes (a new report with a cross join)."""
    rows["exec"][idx] = np.rint(rng.uniform(10, 60, len(idx)) * 60_000.0)


def _plan_regression(rng: np.random.Generator, rows: dict[str, np.ndarray], idx: np.ndarray) -> None:
    """A repeating query gets a bad plan (stale statistics): 5-20x slower, often spilling."""
    m = len(idx)
    rows["exec"][idx] = np.rint(np.minimum(np.maximum(rows["exec"][idx] * rng.uniform(5, 20, m),
                                                      rows["exec"][idx] + rng.uniform(2_000, 20_000, m)),
                                           _EXEC_CAP_MS))
    spills = (rng.random(m) < 0.5) & (rows["scan"][idx] > 10)
    rows["spill"][idx] = np.where(spills, np.rint(rows["scan"][idx] * rng.uniform(0.5, 2, m)), rows["spill"][idx])


def _copy_stall(rng: np.random.Generator, rows: dict[str, np.ndarray], idx: np.ndarray) -> None:
    """A COPY / UNLOAD stalls on S3 throttling or a lock: 3-30 minutes longer."""
    rows["exec"][idx] = np.rint(rows["exec"][idx] + rng.uniform(3, 30, len(idx)) * 60_000.0)


def _cross_instance_heavy(rng: np.random.Generator, rows: dict[str, np.ndarray], idx: np.ndarray) -> None:
    """An ETL-sized statement (normal on a big warehouse) on an instance where this query is light."""
    m = len(idx)
    rows["exec"][idx] = np.rint(rng.uniform(60_000, 600_000, m))
    rows["scan"][idx] = np.rint(np.maximum(rows["scan"][idx], 1.0) + rng.uniform(50_000, 500_000, m))


_POINT_EFFECTS = {
    "runaway_new_query": _runaway_new_query,
    "plan_regression": _plan_regression,
    "copy_stall": _copy_stall,
    "cross_instance_heavy": _cross_instance_heavy,
}


def _point_candidates(rows: dict[str, np.ndarray], name: str, big_instance: int) -> np.ndarray:
    plain = ~rows["aborted"] & ~rows["cached"] & (rows["exec"] > 0)
    if name == "runaway_new_query":
        return rows["fresh"] & plain & (rows["expected"] < 30_000)
    if name == "copy_stall":
        return plain & np.isin(rows["qtype"], (_T["copy"], _T["unload"])) & (rows["expected"] < 60_000)
    if name == "cross_instance_heavy":
        return rows["eligible"] & (rows["instance"] != big_instance) & (rows["scan"] < 10_000)
    return rows["eligible"].copy()


def _episode_rows(rows: dict[str, np.ndarray], inst: int, start: int, end: int) -> np.ndarray:
    return np.flatnonzero((rows["instance"] == inst) & (rows["ts"] >= start) & (rows["ts"] < end))


def _collective(rng: np.random.Generator, rows: dict[str, np.ndarray], name: str, inst: int, start: int,
                end: int, kind: np.ndarray) -> np.ndarray:
    """Apply one collective episode; returns the affected rows."""
    idx = _episode_rows(rows, inst, start, end)
    idx = idx[kind[idx] < 0]
    plain = idx[~rows["aborted"][idx] & ~rows["cached"][idx]]
    m = len(plain)
    if name == "wlm_saturation":  # every WLM slot taken: everyone waits seconds to a minute
        rows["queue"][plain] += np.rint(_lognormal(rng, 8_000.0, 0.7, m))
        return plain
    if name == "spill_wave":  # a memory-hungry job squeezes everyone's working memory
        hit = plain[rows["scan"][plain] > 50]
        k = len(hit)
        rows["spill"][hit] = np.rint(rows["scan"][hit] * rng.uniform(0.5, 3, k)) + 1
        rows["exec"][hit] = np.rint(np.minimum(rows["exec"][hit] * rng.uniform(1.5, 3, k), _EXEC_CAP_MS))
        return hit
    if name == "resize_slowdown":  # elastic resize to half the nodes: held, then slower
        size = rows["cluster_size"][idx]
        rows["cluster_size"][idx] = np.where(size > 0, np.maximum(size // 2, 1), size)
        rows["exec"][plain] = np.rint(np.minimum(rows["exec"][plain] * rng.uniform(1.8, 2.6, m), _EXEC_CAP_MS))
        held = plain[rows["ts"][plain] < start + 10 * _MIN]
        rows["queue"][held] += np.rint(rng.uniform(10_000, 120_000, len(held)))
        return idx
    if name == "cache_miss_storm":  # a commit invalidated the result cache: hits become executions
        cached = idx[rows["cached"][idx]]
        qid_pos = {int(q): i for i, q in enumerate(rows["query_id"].tolist())
                   if rows["instance"][i] == inst}
        out = []
        for i in cached.tolist():
            src = qid_pos.get(int(rows["source"][i]))
            if src is None:
                continue
            for col in ("fingerprint", "qtype", "n_perm", "n_ext", "n_sys", "read_ids", "write_ids", "scan",
                        "spill", "joins", "scans", "aggs", "compile"):
                rows[col][i] = rows[col][src]
            rows["exec"][i] = np.rint(rows["exec"][src] * np.exp(0.35 * rng.standard_normal()))
            rows["cached"][i] = False
            rows["source"][i] = -1
            out.append(i)
        return np.asarray(out, dtype=np.int64)
    msg = f"unknown collective kind {name}"
    raise ValueError(msg)


def _inject_extra(rng: np.random.Generator, rows: dict[str, np.ndarray], kind: np.ndarray, kinds: tuple[str, ...],
                  rate: float, episodes_per_kind: int, day_start_us: int) -> list[tuple[int, int, str]]:
    """Point, contextual and collective kinds of the stress pack; returns the episodes."""
    instances, counts = np.unique(rows["instance"], return_counts=True)
    big = int(instances[np.argmax(counts)])
    point = [k for k in kinds if k in _POINT_EFFECTS]
    per_kind = int(rng.binomial(len(rows["ts"]), rate / len(ANOMALY_KINDS)))  # as much as each classic kind
    for name in point:
        cand = np.flatnonzero(_point_candidates(rows, name, big) & (kind < 0))
        take = min(per_kind, len(cand))
        if not take:
            continue
        idx = rng.choice(cand, take, replace=False)
        _POINT_EFFECTS[name](rng, rows, idx)
        kind[idx] = ALL_KINDS.index(name)
    episodes: list[tuple[int, int, str]] = []
    # Collective episodes go to instances with enough traffic to be seen (>= 4 queries / 10 min),
    # uniformly (a storm is not more likely on a busier instance).
    busy = instances[counts >= 4 * 144]
    if not len(busy):
        return episodes
    busy_w = np.ones(len(busy))
    for name in [k for k in kinds if k in WINDOW_KINDS]:
        for _ in range(episodes_per_kind):
            inst = int(rng.choice(busy, p=busy_w / busy_w.sum()))
            own = np.flatnonzero(rows["instance"] == inst)
            if name == "concurrency_surge":  # an hour of arrivals squeezed into 20 quiet minutes
                # an ordinary hour of the instance (the median of its active hours)
                hours = np.bincount(rows["ts"][own] // (60 * _MIN), minlength=24)
                active = np.flatnonzero(hours > 0)
                start = int(active[np.argsort(hours[active])[len(active) // 2]]) * 60 * _MIN
                src = _episode_rows(rows, inst, start, start + 60 * _MIN)
                src = src[kind[src] < 0]
                rows["ts"][src] = start + (rows["ts"][src] - start) // 3
                m = len(src)
                rows["queue"][src] += np.rint(_lognormal(rng, 3_000.0, 0.8, m))
                rows["exec"][src] = np.rint(np.minimum(rows["exec"][src] * rng.uniform(1.2, 2.0, m), _EXEC_CAP_MS))
                hit = src
            else:
                minutes = int(rng.integers(2, 6)) * 10
                # start at a random query of the instance (episodes happen while it works)
                start = min(int(rows["ts"][rng.choice(own)]) // _WINDOW_US * _WINDOW_US, _DAY_US - minutes * _MIN)
                end = start + minutes * _MIN
                hit = _collective(rng, rows, name, inst, start, end, kind)
            if len(hit):
                kind[hit] = ALL_KINDS.index(name)
                # A window is labelled when it holds at least MIN_WINDOW_ROWS affected queries.
                starts, counts_w = np.unique(rows["ts"][hit] // _WINDOW_US, return_counts=True)
                for ws in starts[counts_w >= MIN_WINDOW_ROWS].tolist():
                    episodes.append((inst, day_start_us + ws * _WINDOW_US, name))
    return episodes


def resolve_kinds(kinds: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``None`` / ``"classic"`` = :data:`ANOMALY_KINDS`; ``"all"`` = :data:`ALL_KINDS`; or a list/comma text."""
    if kinds is None or kinds == "classic":
        return ANOMALY_KINDS
    if kinds == "all":
        return ALL_KINDS
    names = tuple(k.strip() for k in kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in names if k not in ALL_KINDS]
    if unknown or not names:
        msg = (f"The `kinds` parameter of generate() must be 'classic', 'all' or names from {ALL_KINDS}. "
               f"Got unknown {unknown or names!r} instead.")
        raise ConfigurationError(msg)
    return tuple(k for k in ALL_KINDS if k in names)


def window_labels_path(path: str | Path) -> Path:
    """The sidecar of a generated log holding its collective episodes' windows."""
    path = Path(path)
    return path.with_name(path.stem + ".windows.parquet")


_WINDOW_LABEL_SCHEMA = pa.schema([pa.field("instance_id", pa.int64()),
                                  pa.field("window_start", pa.timestamp("ms", tz="UTC")),
                                  pa.field("kind", pa.string())])


def _episode_windows(episodes: list[tuple[int, int, str]]) -> pa.Table:
    """The labelled ``(instance_id, window_start, kind)`` windows as a table."""
    inst = [e[0] for e in episodes]
    starts = [e[1] // 1000 for e in episodes]
    kinds = [e[2] for e in episodes]
    return pa.table({"instance_id": pa.array(inst, pa.int64()),
                     "window_start": pa.array(starts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                     "kind": pa.array(kinds, pa.string())}, schema=_WINDOW_LABEL_SCHEMA)


def window_labels(path: str | Path) -> pa.Table:
    """The ``(instance_id, window_start, kind)`` collective anomalies of a labelled log.

    Read from the sidecar :func:`window_labels_path` written next to the log (labels never travel
    on the wire); an empty table when the log has none. Another tool's sidecar is read into the same
    types: an integer ``instance_id`` (or its digits as text), a ``window_start`` timestamp (naive =
    UTC) or ISO text on the 10-minute grid of the analytics windows, a ``kind`` as
    :func:`~workbench.data.schema.kind_names` reads it.

    Raises
    ------
    DataValidationError
        Naming the sidecar (and the column and row): it does not read as Parquet, lacks a column, or
        holds a value that is none of these (a window off the grid, an integer start whose unit no one
        knows, a NULL instance or start); such windows matched no window and read as missed.
    """
    side = window_labels_path(path)
    if not side.exists():
        return _WINDOW_LABEL_SCHEMA.empty_table()
    if side.is_dir():
        raise _sidecar_error(side, "is a folder, not a Parquet file")
    try:
        table = pq.read_table(side)
    except (OSError, pa.ArrowException) as exc:
        raise _sidecar_error(side, f"does not read as Parquet ({exc})") from None
    missing = [name for name in _WINDOW_LABEL_SCHEMA.names if name not in table.column_names]
    if missing:
        raise _sidecar_error(side, f"lacks the column(s) {', '.join(map(repr, missing))}; it has "
                                   f"{', '.join(map(repr, table.column_names)) or 'none'}")
    instance = _sidecar_instances(side, table.column("instance_id"))
    start = _sidecar_starts(side, table.column("window_start"))
    kinds = kind_names(table.column("kind"), side, "kind")  # a code 3 or 3.0 is "3", as the log's label_kind
    return pa.table([instance, start, kinds], schema=_WINDOW_LABEL_SCHEMA)


def _sidecar_error(side: Path, what: str, column: str | None = None, row: int | None = None) -> Exception:
    from workbench.data.exceptions import DataValidationError

    where = f", column {column!r}" if column else ""
    where += f", row {row:,}" if row is not None else ""
    return DataValidationError(f"Window-label file {str(side)!r}{where} {what}. Expected columns instance_id "
                               "(integer), window_start (a timestamp on the 10-minute grid, UTC when naive) and "
                               "kind (text).", path=str(side), column=column, row=row)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _sidecar_values(side: Path, column: pa.ChunkedArray, name: str, what: str) -> pa.Array:
    """One column of a window-label file as one array (a dictionary decoded), refused when a value is NULL."""
    values = column.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.null_count:
        raise _sidecar_error(side, f"is NULL: every window names its {what}", name,
                             _first(~values.is_valid().to_numpy(zero_copy_only=False)))
    return values


def _sidecar_instances(side: Path, column: pa.ChunkedArray) -> pa.Array:
    """``instance_id`` as int64: integers, whole floats (pandas beside NULLs) or digits as text."""
    values = _sidecar_values(side, column, "instance_id", "instance")
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if pa.types.is_floating(values.type) or pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = values.cast(pa.string()).to_numpy(zero_copy_only=False)
        parsed = np.array([_whole_number(v) for v in text], dtype=object)
        bad = np.array([v is None for v in parsed])
        if bad.any():
            row = _first(bad)
            raise _sidecar_error(side, f"holds {text[row]!r}, not an instance id", "instance_id", row)
        return pa.array(parsed.astype(np.int64), pa.int64())
    raise _sidecar_error(side, f"is of type {values.type}, not an integer", "instance_id")


def _whole_number(text: str) -> int | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) and abs(value) < 2**63 else None


def _sidecar_starts(side: Path, column: pa.ChunkedArray) -> pa.Array:
    """``window_start`` as ``timestamp[ms, UTC]``, from a timestamp (naive = UTC) or ISO text, on the grid."""
    values = _sidecar_values(side, column, "window_start", "start")
    if pa.types.is_timestamp(values.type):
        us = values.cast(pa.timestamp("us", tz=values.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = values.cast(pa.string()).to_numpy(zero_copy_only=False)
        us = np.empty(len(text), dtype=np.int64)
        for row, value in enumerate(text):
            try:
                moment = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise _sidecar_error(side, f"holds {value!r}, not an ISO time", "window_start", row) from None
            moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
            us[row] = round(moment.timestamp() * 1_000_000)
    elif pa.types.is_date(values.type):
        raise _sidecar_error(side, f"is of type {values.type}: a window starts at a time of day, not on a date",
                             "window_start")
    else:  # an integer's unit (s, ms, us, ns) is anyone's guess: ms read as ns put the windows in 1970
        raise _sidecar_error(side, f"is of type {values.type}, not a timestamp (or ISO text): say its unit by "
                                   "storing a timestamp", "window_start")
    off = us % _WINDOW_US != 0
    if off.any():
        row = _first(off)
        moment = dt.datetime.fromtimestamp(us[row] / 1e6, dt.UTC)
        raise _sidecar_error(side, f"holds {moment:%Y-%m-%d %H:%M:%S.%f} UTC, not the start of a 10-minute window "
                                   "(:00, :10, ... :50)", "window_start", row)
    return pa.array(us // 1000, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))


def _to_table(rows: dict[str, np.ndarray], day_start_us: int, kind: np.ndarray) -> pa.Table:
    def ints(values: np.ndarray, null_below_zero: bool = False) -> pa.Array:
        values = np.asarray(values).astype(np.int64)
        mask = values < 0 if null_below_zero else None
        return pa.array(values, type=pa.int64(), mask=mask)

    cached = rows["cached"]
    type_names = np.array(QUERY_TYPES, dtype=object)
    kinds = np.array((*ALL_KINDS, None), dtype=object)
    arrays = [
        ints(rows["instance"]),
        ints(rows["cluster_size"], True),
        ints(rows["user"]),
        ints(rows["database"]),
        ints(rows["query_id"]),
        pa.array(rows["ts"] + day_start_us, type=pa.int64()).cast(REDSET_SCHEMA.field("arrival_timestamp").type),
        ints(rows["compile"]),
        ints(rows["queue"]),
        ints(rows["exec"]),
        pa.array(rows["fingerprint"], type=pa.string()),
        pa.array(rows["aborted"], type=pa.bool_()),
        pa.array(cached, type=pa.bool_()),
        ints(rows["source"], True),
        pa.array(type_names[rows["qtype"]], type=pa.string()),
        ints(rows["n_perm"], True),
        ints(rows["n_ext"], True),
        ints(rows["n_sys"], True),
        pa.array(rows["read_ids"], type=pa.string()),
        pa.array(rows["write_ids"], type=pa.string()),
        ints(rows["scan"]),
        ints(rows["spill"]),
        ints(rows["joins"], True),
        ints(rows["scans"], True),
        ints(rows["aggs"], True),
        pa.array(kind >= 0, type=pa.bool_()),
        pa.array(kinds[kind], type=pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=_OUTPUT_SCHEMA)


_OUTPUT_SCHEMA = pa.schema(list(REDSET_SCHEMA) + list(LABEL_SCHEMA), metadata=REDSET_SCHEMA.metadata)


def _check(name: str, value: float, low: float, high: float | None, what: str) -> None:
    if not value >= low or (high is not None and not value <= high):  # NaN fails too
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        msg = f"The `{name}` parameter of generate() must be {what} {bound}. Got {value!r} instead."
        raise ConfigurationError(msg)


def generate(
    out: str | Path,
    *,
    days: int = 4,
    instances: int = 16,
    seed: int = 0,
    start: str | dt.date = "2024-03-04",
    anomaly_rate: float = 0.002,
    rows_per_day: int | None = None,
    progress: bool = False,
    kinds: str | tuple[str, ...] | list[str] | None = None,
    episodes_per_kind: int = 1,
) -> GenerateSummary:
    """Write a synthetic Redset-like query log with labelled anomalies to a Parquet file.

    Parameters
    ----------
    out : str or Path
        Parquet file to write (parent folders are created; an existing file is replaced).
    days : int
        Number of consecutive UTC days, starting at ``start``.
    instances : int
        Number of instances (clusters); about a quarter are serverless.
    seed : int
        Same seed and arguments give byte-identical output.
    start : str or date
        First day, ``YYYY-MM-DD``.
    anomaly_rate : float
        Expected share of labelled anomalous queries (split evenly over :data:`ANOMALY_KINDS`).
    rows_per_day : int, optional
        Average queries per day over the fleet (default 500,000; the weekday cycle varies it).
    progress : bool
        Show a tqdm progress bar, one step per day.
    kinds : str or sequence of str, optional
        Which anomaly kinds to inject: ``"classic"`` (default, :data:`ANOMALY_KINDS`, the demo log),
        ``"all"`` (the stress pack, :data:`ALL_KINDS`) or names. Per-query kinds share
        ``anomaly_rate``; each window kind gets ``episodes_per_kind`` episodes a day, whose
        windows are written to the sidecar :func:`window_labels_path`.
    episodes_per_kind : int
        Collective episodes per window kind and day.

    Returns
    -------
    GenerateSummary
        Path, row count, anomalies, time span and wall time.
    """
    started = time.perf_counter()
    rows_per_day = 500_000 if rows_per_day is None else rows_per_day
    _check("days", days, 1, 3_650, "an integer")
    _check("instances", instances, 1, 10_000, "an integer")
    _check("rows_per_day", rows_per_day, 1, None, "an integer")
    _check("anomaly_rate", anomaly_rate, 0.0, 0.2, "a float")
    _check("episodes_per_kind", episodes_per_kind, 0, 100, "an integer")
    _check("seed", seed, 0, None, "an integer")
    chosen = resolve_kinds(kinds)
    classic = tuple(k for k in chosen if k in ANOMALY_KINDS)
    stress = chosen != ANOMALY_KINDS
    if isinstance(start, str):
        try:
            start = dt.date.fromisoformat(start)
        except ValueError as exc:
            msg = f"The `start` parameter of generate() must be a date like 2024-03-04. Got {start!r} instead."
            raise ConfigurationError(msg) from exc
    epoch_us = int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC).timestamp()) * 1_000_000
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    setup_seq, *day_seqs = root.spawn(days + 1)
    # The stress pack draws from its own streams, so the classic log's bytes never change.
    extra_seqs = root.spawn(days) if stress else []
    episodes: list[tuple[int, int, str]] = []
    fleet = _setup_instances(np.random.Generator(np.random.PCG64(setup_seq)), n=instances, days=days,
                             rows_per_day=rows_per_day)
    weekday = _WEEKDAY_PROFILE / _WEEKDAY_PROFILE.mean()
    total_rows = total_anomalies = 0
    first_ts = last_ts = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=days, desc="generate", unit="day")
    tmp = out.with_name(out.name + ".partial")
    side_tmp = out.with_name(out.name + ".windows.partial")
    try:
        with pq.ParquetWriter(tmp, _OUTPUT_SCHEMA, compression="zstd") as writer:
            for day in range(days):
                rng = np.random.Generator(np.random.PCG64(day_seqs[day]))
                date = start + dt.timedelta(days=day)
                active = [inst for inst in fleet if inst.first_day <= day <= inst.last_day]
                weights = np.array([inst.weight for inst in active])
                n_day = rows_per_day * weekday[date.weekday()]
                parts = []
                for inst, w in zip(active, weights / weights.sum(), strict=True):
                    noise = 1.0 if inst.weight == weights.max() else float(np.exp(0.15 * rng.standard_normal()))
                    n_inst = int(rng.poisson(n_day * w * noise))
                    hour_w = _HOUR_PROFILE ** inst.diurnality * np.exp(0.1 * rng.standard_normal(24))
                    if inst.serverless:
                        hours = rng.choice(24, int(rng.integers(2, 8)), replace=False, p=hour_w / hour_w.sum())
                        mask = np.zeros(24)
                        mask[hours] = 1.0
                        hour_w = hour_w * mask
                    part = _instance_day(rng, inst, n_inst, hour_w / hour_w.sum())
                    if part is not None:
                        parts.append(part)
                if not parts:
                    continue
                rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                order = np.lexsort((rows["query_id"], rows["ts"]))
                rows = {key: value[order] for key, value in rows.items()}
                kind = _inject_anomalies(rng, rows, anomaly_rate * len(classic) / len(ANOMALY_KINDS)
                                         if stress else anomaly_rate, classic)
                if stress:
                    extra_rng = np.random.Generator(np.random.PCG64(extra_seqs[day]))
                    episodes += _inject_extra(extra_rng, rows, kind, chosen, anomaly_rate, episodes_per_kind,
                                              epoch_us + day * _DAY_US)
                    order = np.lexsort((rows["query_id"], rows["ts"]))
                    rows = {key: value[order] for key, value in rows.items()}
                    kind = kind[order]
                table = _to_table(rows, epoch_us + day * _DAY_US, kind)
                writer.write_table(table, row_group_size=_ROW_GROUP)
                total_rows += table.num_rows
                total_anomalies += int((kind >= 0).sum())
                day_first = int(rows["ts"][0]) + epoch_us + day * _DAY_US
                day_last = int(rows["ts"][-1]) + epoch_us + day * _DAY_US
                first_ts = day_first if first_ts is None else first_ts
                last_ts = day_last
                logger.debug("generated day=%s rows=%d", date, table.num_rows)
                if bar is not None:
                    bar.update(1)
        # The window labels belong to the log beside them: the old ones go before the new log is put in place
        # and the new ones after it, so a kill in between leaves a log without them (said where they are
        # read), never the labels of another log beside it.
        side = window_labels_path(out)
        if stress:
            pq.write_table(_episode_windows(episodes), side_tmp)
        side.unlink(missing_ok=True)
        tmp.replace(out)
        if stress:
            side_tmp.replace(side)
    finally:
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    summary = GenerateSummary(
        path=out, rows=total_rows, days=days, instances=instances, anomalies=total_anomalies,
        seconds=seconds,
        first_arrival=dt.datetime.fromtimestamp((first_ts or epoch_us) / 1e6, tz=dt.UTC),
        last_arrival=dt.datetime.fromtimestamp((last_ts or epoch_us) / 1e6, tz=dt.UTC),
    )
    logger.debug("generated path=\"%s\" rows=%d anomalies=%d seconds=%.1f", out, total_rows,
                total_anomalies, seconds)
    return summary
