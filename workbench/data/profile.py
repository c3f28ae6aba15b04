"""``profile``: does a query log look like Redset? Its aggregates against the published ones.

Each check computes one aggregate of the log and compares it with a range around the figure
published for Redset (the sources are in ``docs`` of this project's reference notes: the Redset
README, the VLDB paper as quoted, hourly aggregates of the full dataset, and analyses of the full
provisioned and serverless streams). The ranges are fixed from those figures, not from any
generator; they are wide enough to hold a sample of a few clusters, because Redset's pooled
numbers are dominated by its biggest clusters.

A check whose aggregate cannot be computed (e.g. no fingerprints, fewer than 7 days for a weekly
figure) is reported as ``n/a`` and does not count as out of range.
"""

from __future__ import annotations

import dataclasses
import math
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.data.exceptions import DataValidationError
from workbench.data.schema import datetime_from_us, require_log

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Check", "ProfileReport", "profile"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One aggregate of the log against its published range."""

    group: str
    name: str
    observed: float | None
    low: float
    high: float
    published: str
    unit: str = "share"

    @property
    def status(self) -> str:
        """``in``, ``OUT`` or ``n/a`` (no observation)."""
        if self.observed is None or (isinstance(self.observed, float) and math.isnan(self.observed)):
            return "n/a"
        return "in" if self.low <= self.observed <= self.high else "OUT"

    def _fmt(self, value: float) -> str:
        if self.unit == "share":
            return f"{100 * value:.1f}%" if value >= 0.001 or value == 0 else f"{100 * value:.3f}%"
        if self.unit == "ms":
            return f"{value:,.0f} ms"
        return f"{value:,.2f}"

    @property
    def observed_text(self) -> str:
        """The observed value as printed."""
        return "-" if self.status == "n/a" else self._fmt(float(self.observed))  # type: ignore[arg-type]

    @property
    def range_text(self) -> str:
        """The published range as printed."""
        return f"{self._fmt(self.low)} .. {self._fmt(self.high)}"


@dataclasses.dataclass(frozen=True)
class ProfileReport:
    """The checks of one log; ``str()`` is the compact table ``workbench profile`` prints."""

    path: Path
    rows: int
    instances: int
    days: float
    tier: str
    checks: tuple[Check, ...]
    #: UTC dates with at least one query: far fewer than ``days`` when a few rows lie far from the rest
    active_days: int | None = None
    first_arrival: datetime | None = None
    last_arrival: datetime | None = None

    @property
    def sparse_span(self) -> bool:
        """Whether the span is mostly empty days (an outlier row far from the rest stretches it)."""
        return self.active_days is not None and self.days >= 3 and self.active_days < 0.5 * (self.days + 1)

    @property
    def all_in_range(self) -> bool:
        """No check is out of its published range."""
        return all(check.status != "OUT" for check in self.checks)

    @property
    def out_of_range(self) -> list[Check]:
        """The checks outside their published range."""
        return [check for check in self.checks if check.status == "OUT"]

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_frame(self) -> pd.DataFrame:
        """The checks as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([{**dataclasses.asdict(c), "status": c.status} for c in self.checks])

    def __str__(self) -> str:
        span = f"{self.days:.1f} days"
        if self.sparse_span and self.first_arrival is not None and self.last_arrival is not None:
            span = (f"{self.days:,.1f} days ({self.first_arrival:%Y-%m-%d} .. {self.last_arrival:%Y-%m-%d}) of which "
                    f"{self.active_days:,} have queries: a few rows lie far from the rest")
        head = (f"{self.path}: {self.rows:,} queries, {self.instances} instances, {span}; "
                f"compared with published Redset figures ({self.tier})")
        w_name = max(len(c.name) for c in self.checks)
        w_obs = max(len(c.observed_text) for c in self.checks)
        w_rng = max(len(c.range_text) for c in self.checks)
        title = f"  {'':<14} {'aggregate':<{w_name}}  {'observed':>{w_obs}}  {'range':<{w_rng}}  mark  published"
        lines = [head, title]
        for c in self.checks:
            lines.append(f"  {c.group:<14} {c.name:<{w_name}}  {c.observed_text:>{w_obs}}  {c.range_text:<{w_rng}}  "
                         f"{c.status:<4}  {c.published}")
        bad = self.out_of_range
        lines.append("all in range" if not bad else f"{len(bad)} out of range: {', '.join(c.name for c in bad)}")
        return "\n".join(lines)


def _ranges(tier: str) -> dict[str, tuple[float, float, str]]:
    """name -> (low, high, published figure with its source), for ``tier``."""
    serverless = tier == "serverless"
    ranges = {
        "select": (0.15, 0.35, "26% [PR]" if serverless else "20.3% [M]; 20-26% over both tiers"),
        "reads (select + cached)": (0.20, 0.45, "30.9% [M]"),
        "copy": (0.05, 0.20, "13% [PR]" if serverless else "9.4% [PU]"),
        "cached (was_cached)": (0.01, 0.08, "4.59% pooled [M]") if serverless
        else (0.03, 0.20, "10.63% pooled [M][H]"),
        "cached typed other, NULL fingerprint": (0.99, 1.0, "all cache hits [R][M]"),
        "aborted": (0.001, 0.02, "0.91% pooled [M]" if serverless else "0.51% pooled [M][H]"),
        "execution p50": (10.0, 300.0, "~100 ms fleet [P]; 37 ms for 92.65% 'normal' queries [PU]"),
        "execution mean": (1_000.0, 8_000.0, "2,780 ms; hourly p50 3.1k, max 6.1k [H][PU]"),
        "compile mean": (1_000.0, 6_000.0, "2,694 ms; hourly p50 3.0k, p90 3.9k [H]"),
        "scan < 1 GB": (0.60, 0.90, "75% [MD]"),
        "scan 1-10 GB": (0.08, 0.30, "19% [MD]"),
        "scan >= 10 GB": (0.01, 0.12, "5.4% [MD]"),
        "queue > 0": (0.005, 0.10, "~3.5% with queue and exec > 0 [PU]; 'a few %'"),
        "spill > 0": (0.005, 0.06, "2.29% [PU]"),
        "fingerprint repeat share": (0.75, 0.97, "87.5% pooled; cluster median 91.2% [M]") if serverless
        else (0.75, 0.97, "90.2% pooled; cluster median 84.7% [74.4, 94.2] [M]"),
        "top-10 fingerprints, cluster median": (0.20, 0.65, "45.5% [M]" if serverless
                                                else "37.4% [24.6, 59.2] [M]"),
        "same user+fingerprint within 60 s": (0.50, 0.85, "69.7% pooled, median 64.6% (provisioned) [M]"),
        "hourly peak / trough": (1.5, 3.5, "2.11x [H]" if serverless else "2.26x [H]"),
        "weekday / weekend rate": (0.8, 1.25, "no weekend dip (Mon..Sun 210k..214k/h) [H]"),
        "cluster_size mean (provisioned rows)": (4.0, 8.0, "5.74 weighted by queries [H]"),
    }
    if serverless:  # INSERT's share is published for serverless only; cluster_size is NULL there
        ranges = {**{"insert": (0.25, 0.45, "36% [PR]")}, **ranges}
        del ranges["cluster_size mean (provisioned rows)"]
    return ranges


_GROUPS = {
    "select": "query types", "reads (select + cached)": "query types", "copy": "query types",
    "insert": "query types", "cached (was_cached)": "result cache",
    "cached typed other, NULL fingerprint": "result cache", "aborted": "aborts",
    "execution p50": "runtime", "execution mean": "runtime", "compile mean": "runtime",
    "scan < 1 GB": "scan", "scan 1-10 GB": "scan", "scan >= 10 GB": "scan",
    "queue > 0": "queue/spill", "spill > 0": "queue/spill",
    "fingerprint repeat share": "repetition", "top-10 fingerprints, cluster median": "repetition",
    "same user+fingerprint within 60 s": "repetition", "hourly peak / trough": "arrivals",
    "weekday / weekend rate": "arrivals", "cluster_size mean (provisioned rows)": "fleet",
}
_UNITS = {"execution p50": "ms", "execution mean": "ms", "compile mean": "ms", "hourly peak / trough": "ratio",
          "weekday / weekend rate": "ratio", "cluster_size mean (provisioned rows)": "ratio"}


def profile(path: str | os.PathLike[str], *, tier: str = "auto", memory_limit: str = "1GB") -> ProfileReport:
    """Compare a query log (file or folder) with the published Redset aggregates.

    Parameters
    ----------
    path : path
        A query log in the Redset schema (prepared or generated), or a folder of them.
    tier : "auto", "provisioned" or "serverless"
        Which published figures to use; ``auto`` picks serverless when most rows have a NULL
        ``cluster_size`` (Redset's serverless rows have none).
    memory_limit : str
        DuckDB's memory limit (the window functions spill beyond it).
    """
    import duckdb

    from workbench.replay._source import check_log_columns, log_parts

    if tier not in ("auto", "provisioned", "serverless"):
        msg = f"tier must be 'auto', 'provisioned' or 'serverless'. Got {tier!r}."
        raise DataValidationError(msg)
    path = require_log(Path(path).expanduser())
    # validate's column checks first: DuckDB would read a duration[us] as milliseconds and profile it
    # 1000 times too slow, or stop on text in a boolean column with its own words
    check_log_columns(path)
    files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in log_parts(path)) + "]"
    con = duckdb.connect(config={"memory_limit": memory_limit})
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar_print = false")
        # query_type as schema.query_type_key reads it ('SELECT ' is a select)
        con.execute(f"CREATE VIEW log AS SELECT * REPLACE (lower(trim(CAST(query_type AS VARCHAR))) AS query_type) "
                    f"FROM read_parquet({files}, union_by_name=true)")
        base = con.execute("""
            SELECT count(*), count(DISTINCT instance_id),
                   epoch(max(arrival_timestamp) - min(arrival_timestamp)) / 86400.0,
                   avg((query_type = 'select')::INT), avg((query_type = 'select' OR was_cached)::INT),
                   avg((query_type = 'copy')::INT), avg((query_type = 'insert')::INT),
                   avg(was_cached::INT),
                   avg(CASE WHEN was_cached THEN (query_type = 'other' AND feature_fingerprint IS NULL)::INT END),
                   avg(was_aborted::INT),
                   median(execution_duration_ms), avg(execution_duration_ms), avg(compile_duration_ms),
                   avg((queue_duration_ms > 0)::INT), avg((mbytes_spilled > 0)::INT),
                   avg((cluster_size IS NULL)::INT), avg(cluster_size),
                   count(DISTINCT CAST(arrival_timestamp AS DATE)), epoch_us(min(arrival_timestamp)),
                   epoch_us(max(arrival_timestamp))
            FROM log""").fetchone()
        (rows, instances, days, select, reads, copy, insert, cached, cached_other, aborted, exec_p50, exec_mean,
         compile_mean, queue, spill, serverless_share, cluster_mean, active_days, first, last) = base
        if not rows:
            msg = f"Query log {str(path)!r} has no rows to profile."
            raise DataValidationError(msg, path=str(path))
        if days is None:  # every arrival NULL (the span and the hours need them): it stopped with a TypeError
            msg = (f"Query log {str(path)!r} has no row with an arrival_timestamp to profile: it is NULL on all "
                   f"{rows:,} rows. `workbench validate {path}` lists them.")
            raise DataValidationError(msg, path=str(path), column="arrival_timestamp")
        scan = con.execute("""
            SELECT avg((mbytes_scanned < 1000)::INT), avg((mbytes_scanned >= 1000 AND mbytes_scanned < 10000)::INT),
                   avg((mbytes_scanned >= 10000)::INT)
            FROM log WHERE query_type NOT IN ('unload', 'other', 'vacuum') AND NOT coalesce(was_aborted, false)
              AND mbytes_scanned IS NOT NULL""").fetchone()
        repetition = con.execute("""
            WITH f AS (
                SELECT instance_id, user_id, feature_fingerprint AS fp, arrival_timestamp AS t,
                       row_number() OVER (PARTITION BY instance_id, feature_fingerprint
                                          ORDER BY arrival_timestamp, query_id) AS nth,
                       lag(arrival_timestamp) OVER w AS prev_t, lead(arrival_timestamp) OVER w AS next_t
                FROM log WHERE feature_fingerprint IS NOT NULL
                WINDOW w AS (PARTITION BY instance_id, user_id, feature_fingerprint
                             ORDER BY arrival_timestamp, query_id))
            SELECT avg((nth > 1)::INT),
                   avg((coalesce(t - prev_t <= INTERVAL 60 SECOND, false)
                        OR coalesce(next_t - t <= INTERVAL 60 SECOND, false))::INT)
            FROM f""").fetchone()
        top10 = con.execute("""
            WITH c AS (SELECT instance_id, feature_fingerprint, count(*) AS n FROM log
                       WHERE feature_fingerprint IS NOT NULL GROUP BY ALL),
                 r AS (SELECT instance_id, n, row_number() OVER (PARTITION BY instance_id ORDER BY n DESC) AS k,
                              sum(n) OVER (PARTITION BY instance_id) AS total FROM c)
            SELECT median(share) FROM (
                SELECT instance_id, sum(n) FILTER (WHERE k <= 10) / any_value(total) AS share
                FROM r GROUP BY instance_id HAVING any_value(total) >= 1000)""").fetchone()[0]
        hours = con.execute("""
            SELECT hour(arrival_timestamp) AS h, count(*) FROM log GROUP BY h ORDER BY h""").fetchall()
        peak_trough = None
        if len(hours) == 24 and days >= 1:
            counts = [n for _, n in hours]
            peak_trough = max(counts) / min(counts) if min(counts) else None
        weekly = None
        if days >= 7 and (active_days or 0) >= 7:  # not two weeks apart, one row each
            week = con.execute("""
                SELECT avg(n) FILTER (WHERE dow NOT IN (0, 6)) / avg(n) FILTER (WHERE dow IN (0, 6)) FROM (
                    SELECT date_trunc('day', arrival_timestamp) AS d, dayofweek(any_value(arrival_timestamp)) AS dow,
                           count(*) AS n FROM log GROUP BY d)""").fetchone()[0]
            weekly = week
    except duckdb.Error as exc:
        # DuckDB's text goes on with the failing SQL and a caret: the user needs its first line
        reason = str(exc).strip().splitlines()[0]
        msg = f"Could not profile {str(path)!r}: {reason}. `workbench validate FILE` names what is wrong."
        raise DataValidationError(msg, path=str(path)) from exc
    finally:
        con.close()

    if tier == "auto":
        tier = "serverless" if (serverless_share or 0) > 0.5 else "provisioned"
    observed = {
        "select": select, "reads (select + cached)": reads, "copy": copy, "insert": insert,
        "cached (was_cached)": cached, "cached typed other, NULL fingerprint": cached_other, "aborted": aborted,
        "execution p50": exec_p50, "execution mean": exec_mean, "compile mean": compile_mean,
        "scan < 1 GB": scan[0], "scan 1-10 GB": scan[1], "scan >= 10 GB": scan[2],
        "queue > 0": queue, "spill > 0": spill,
        "fingerprint repeat share": repetition[0], "top-10 fingerprints, cluster median": top10,
        "same user+fingerprint within 60 s": repetition[1], "hourly peak / trough": peak_trough,
        "weekday / weekend rate": weekly,
        "cluster_size mean (provisioned rows)": cluster_mean if tier == "provisioned" else None,
    }
    checks = tuple(
        Check(_GROUPS[name], name, None if observed[name] is None else float(observed[name]), low, high, published,
              _UNITS.get(name, "share"))
        for name, (low, high, published) in _ranges(tier).items()
    )
    return ProfileReport(path=path, rows=int(rows), instances=int(instances), days=float(days or 0.0), tier=tier,
                         checks=checks, active_days=int(active_days or 0), first_arrival=datetime_from_us(first),
                         last_arrival=datetime_from_us(last))
