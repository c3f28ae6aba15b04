"""A small populated WORKBENCH_HOME for the notebook and report tests, built without Kafka.

:func:`build_offline_home` generates a labelled log, trains two model versions offline, scores
the days with the Scorer and writes what the streaming pipeline would have written: Arrow shards,
``window_stats`` rows and lakehouse anomalies. To test against the real pipeline instead, replace
the body of :func:`populate` (one function) with ``Workbench.start(data=..., speedup="max")`` and
``wait()``; the notebooks only read the stores.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.config import Settings

__all__ = ["DAYS", "START", "build_offline_home", "cached_home", "populate"]

logger = logging.getLogger(__name__)

START = dt.date(2024, 3, 4)
DAYS = 3


def _day_slice(table: pa.Table, day: dt.date) -> pa.Table:
    lo = pa.scalar(dt.datetime.combine(day, dt.time(), dt.UTC), pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC), pa.timestamp("us", tz="UTC"))
    ts = table.column("arrival_timestamp")
    return table.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))


def populate(settings: Settings, data: Path) -> None:
    """Fill ``settings.home`` from the labelled log ``data`` (offline: no broker, no processes)."""
    from workbench.analysis.windows import finalize, merge_all, partial_aggregates
    from workbench.ml import Scorer, train_day
    from workbench.pipeline.contracts import anomaly_rows
    from workbench.pipeline.scoring import AnomalyPublisher
    from workbench.store.lakehouse import AnomalyLakehouse
    from workbench.store.shards import write_shard
    from workbench.store.window_stats import WindowStatsStore

    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    # Two versions: day 1 (older) and days 1-2 (current), so the comparison notebook has a pair.
    train_day(settings, days[0], window_days=1, data=data, model_params={"max_iter": 40})
    train_day(settings, days[1], window_days=2, data=data, model_params={"max_iter": 40})
    table = pq.read_table(data)
    scorer = Scorer(settings.models_dir, background=False)
    thresholds = AnomalyPublisher(settings).threshold  # no broker needed: it only reads model.json
    partials: list[dict] = []
    settings.lakehouse_dir.mkdir(parents=True, exist_ok=True)
    with AnomalyLakehouse.from_settings(settings) as lake:
        for offset, day in enumerate(days):
            part = _day_slice(table, day)
            scored = pa.Table.from_batches([scorer.score(part)])
            n = scored.num_rows
            stored = scored.append_column("kafka_partition", pa.array([0] * n, pa.int32()))
            stored = stored.append_column("kafka_offset", pa.array(range(offset * 10**7, offset * 10**7 + n),
                                                                  pa.int64()))
            write_shard(settings.shards_dir, day, 0, offset * 10**7, stored)
            partials += partial_aggregates(part)
            anomalies = anomaly_rows(stored, thresholds)  # the mapping production uses
            if anomalies.num_rows:
                lake.write(anomalies)
    rows = [finalize(p) for p in merge_all(partials)]
    counts = _anomaly_counts(settings)
    for row in rows:
        row["anomalies"] = counts.get((row["instance_id"], row["window_start"]), 0)
    with WindowStatsStore.from_settings(settings) as store:
        store.upsert(rows)


def _anomaly_counts(settings: Settings) -> dict[tuple[int, dt.datetime], int]:
    from workbench.analysis import read

    df = read.anomalies(settings)
    out: dict[tuple[int, dt.datetime], int] = {}
    for inst, ts in zip(df["instance_id"], df["arrival_timestamp"], strict=True):
        start = ts.to_pydatetime().replace(minute=ts.minute - ts.minute % 10, second=0, microsecond=0)
        key = (int(inst), start)
        out[key] = out.get(key, 0) + 1
    return out


def build_offline_home(root: Path, *, rows_per_day: int = 6000, instances: int = 6, seed: int = 3) -> tuple[Path, Path]:
    """Generate the log under ``root`` and populate ``root/home``; returns ``(home, data)``."""
    from workbench.data.generator import generate

    home = root / "home"
    data = home / "data" / "log.parquet"  # where the notebooks look for a labelled log by default
    generate(data, days=DAYS, instances=instances, seed=seed, start=START, rows_per_day=rows_per_day,
             anomaly_rate=0.01)
    populate(Settings(home=home), data)
    return home, data


def cached_home(base: Path) -> tuple[Path, Path]:
    """Build the home once per test session under ``base`` (shared by several test modules).

    Under pytest-xdist every worker has its own ``base`` inside the session's folder: the home is
    then built once in that shared parent, under a lock, and read by every worker.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "notebook-home"
    marker = root / "READY.json"
    root.mkdir(parents=True, exist_ok=True)
    with (base / "notebook-home.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if marker.is_file():
            info = json.loads(marker.read_text())
            return Path(info["home"]), Path(info["data"])
        home, data = build_offline_home(root)
        marker.write_text(json.dumps({"home": str(home), "data": str(data), "pid": os.getpid()}))
    return home, data
