"""Small labelled logs from the real data generator, for the ML tests and benchmarks."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["day_slice", "generated_log", "slower"]


def generated_log(*, days: int = 2, rows_per_day: int = 4000, instances: int = 4, seed: int = 0,
                  anomaly_rate: float = 0.005, start: dt.date = dt.date(2024, 3, 1)) -> pa.Table:
    """A labelled log from :func:`workbench.data.generator.generate`, read back into memory."""
    from workbench.data.generator import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.parquet"
        generate(path, days=days, instances=instances, seed=seed, start=start, anomaly_rate=anomaly_rate,
                 rows_per_day=rows_per_day)
        return pq.read_table(path)


def day_slice(table: pa.Table, day: dt.date) -> pa.Table:
    """Rows whose UTC arrival day is ``day``."""
    start = pa.scalar(dt.datetime.combine(day, dt.time(), dt.UTC), pa.timestamp("us", tz="UTC"))
    end = pa.scalar(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC),
                    pa.timestamp("us", tz="UTC"))
    ts = table.column("arrival_timestamp")
    return table.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, end)))


def slower(table: pa.Table, factor: float) -> pa.Table:
    """``table`` with every execution time multiplied by ``factor`` (whole milliseconds): the same log on a
    warehouse that much slower, or with a workload that much heavier."""
    i = table.schema.get_field_index("execution_duration_ms")
    column = table.column(i)
    scaled = pc.cast(pc.round(pc.multiply(pc.cast(column, pa.float64()), factor)), column.type)
    return table.set_column(i, "execution_duration_ms", scaled)
