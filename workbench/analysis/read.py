"""Read API for the notebooks: window stats, class shares, critical instances, metrics, anomalies.

Every function takes the :class:`~workbench.config.Settings` (or explicit stores) and returns a pandas
``DataFrame`` (or a small dict). SQL only ever receives values as bound parameters.

Time handling (fixes weaknesses 26/27 of the earlier dashboard):

* every bound must be a tz-aware ``datetime`` (naive ones raise) and every returned time is UTC;
* named periods (``'24h'``, ``'1week'``) end at the **data** time, the latest ``window_end`` in
  ``window_stats`` (of the selected instances, for :func:`metrics` of a selection), never at the wall
  clock, and both the current ``[end - d, end)`` and the previous ``[end - 2d, end - d)`` periods have
  explicit upper bounds;
* windows are selected by ``window_start`` and anomalies by ``arrival_timestamp`` with the same
  half-open bounds.

Critical rule (pulse-study 5.3 used ``count > 50 OR share > 5 %`` per class): the default here is
**AND** -- at least :data:`CRITICAL_MIN_COUNT` problem queries *and* at least
:data:`CRITICAL_MIN_SHARE` of the instance's queries in one class. With OR, 51 slow queries out of a
busy cluster's 100,000 (0.05 %) made it "critical", and 1 of 3 queries on an idle one did too; AND
needs both volume and a meaningful share. ``mode='any'`` restores the old OR rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis import classify
from workbench.analysis.classify import CLASSES, PROBLEM_CLASSES
from workbench.analysis.exceptions import AnalysisError, UnknownWindowError
from workbench.exceptions import ConfigurationError
from workbench.store.exceptions import LakehouseNotFoundError
from workbench.store.lakehouse import CATALOG_ALIAS, connect_settings, duckdb_connection
from workbench.store.window_stats import WindowStatsStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from workbench.config import Settings

__all__ = [
    "CRITICAL_MIN_COUNT",
    "CRITICAL_MIN_SHARE",
    "WINDOWS",
    "Period",
    "anomalies",
    "class_shares",
    "coverage_note",
    "critical_instances",
    "critical_types",
    "data_end",
    "judged_through",
    "metrics",
    "period",
    "remediation",
    "window_anomalies",
    "window_stats",
]

logger = logging.getLogger(__name__)

#: Named analysis periods.
WINDOWS: Final[dict[str, timedelta]] = {"24h": timedelta(hours=24), "1week": timedelta(days=7)}
CRITICAL_MIN_COUNT: Final = 50
CRITICAL_MIN_SHARE: Final = 0.05
CriticalMode = Literal["all", "any"]
_COUNT_COLS: Final = tuple(f"{c}_queries" for c in CLASSES)
_INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True)
class Period:
    """A current period ``[start, end)`` and the previous one ``[previous_start, start)`` (UTC)."""

    name: str
    start: datetime
    end: datetime
    previous_start: datetime


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        msg = (f"{name} must be a timezone-aware datetime (e.g. datetime(..., tzinfo=datetime.UTC)). "
               f"Got {value!r} instead.")
        raise AnalysisError(msg)
    return value


def _ids(instances: Sequence[int] | None) -> list[int] | None:
    return None if instances is None else [int(i) for i in instances]


def _stats_table(settings: Settings, start: datetime | None, end: datetime | None,
                 instances: Sequence[int] | None) -> pa.Table:
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        return store.read(_aware(start, "start"), _aware(end, "end"), _ids(instances))


def _frame(result: duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation) -> pd.DataFrame:
    return result.to_arrow_table().to_pandas()


def data_end(settings: Settings, instances: Sequence[int] | None = None) -> datetime | None:
    """The data's "now": the latest ``window_end`` in ``window_stats`` (of ``instances`` when given; ``None``
    when there is none)."""
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        return store.newest_window_end(instances)


def judged_through(settings: Settings, day: date | None) -> bool:
    """Whether the scoring app's deferred step has judged ``day`` (its runtime-residual windows are stored).

    That step (persistent runs, runtime-residual windows) takes a day once it is settled: once events of
    a later day arrived, or the replay's end-of-log marker came on every partition (the log's last day).
    Until then the lakehouse lacks that day's persistent runs.
    """
    if day is None:
        return True
    try:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            newest = store.newest_residual_window()
    except Exception as exc:  # not created yet: nothing judged
        logger.debug("residual windows unavailable: %s", exc)
        return False
    return newest is not None and newest.date() >= day


def period(settings: Settings, window: str = "24h", *, end: datetime | None = None) -> Period:
    """The named period ending at the data time (or at ``end``).

    Raises
    ------
    UnknownWindowError
        For a name not in :data:`WINDOWS`.
    AnalysisError
        When there is no data yet and no ``end`` was given.
    """
    if window not in WINDOWS:
        msg = f"window must be one of {sorted(WINDOWS)}. Got {window!r} instead."
        raise UnknownWindowError(msg)
    stop = _aware(end, "end") or data_end(settings)
    if stop is None:
        msg = "window_stats is empty, so there is no data time to end the period at. Replay some data first."
        raise AnalysisError(msg)
    length = WINDOWS[window]
    return Period(window, stop - length, stop, stop - 2 * length)


def window_stats(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                 instances: Sequence[int] | None = None) -> pd.DataFrame:
    """Window rows with ``start <= window_start < end`` for the given instances (all when ``None``)."""
    return _stats_table(settings, start, end, instances).to_pandas()


def class_shares(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                 instances: Sequence[int] | None = None) -> pd.DataFrame:
    """Per ``window_start``: summed class counts over the instances and each class's share (0..1).

    Columns: ``window_start, total_queries, <class>_queries..., <class>_share...`` ordered by time.
    """
    table = _stats_table(settings, start, end, instances)
    con = duckdb_connection()
    con.register("ws", table)
    sums = ", ".join(f"{_sum(c)} AS {c}" for c in ("total_queries", *_COUNT_COLS))
    shares = ", ".join(f"{c}_queries / nullif(total_queries, 0) AS {c}_share" for c in CLASSES)
    rel = con.execute(f"SELECT *, {shares} FROM (SELECT window_start, {sums} FROM ws GROUP BY window_start) "
                      "ORDER BY window_start")
    return _frame(rel)


def critical_instances(settings: Settings, window: str = "24h", *, min_count: int = CRITICAL_MIN_COUNT,
                       min_share: float = CRITICAL_MIN_SHARE, mode: CriticalMode = "all",
                       end: datetime | None = None) -> pd.DataFrame:
    """Instances with at least one critical problem class over the period.

    Parameters
    ----------
    window : {'24h', '1week'}
        The period, ending at the data time.
    min_count, min_share : int, float
        The thresholds (per instance and class).
    mode : {'all', 'any'}
        ``'all'`` (default): count >= min_count AND share >= min_share. ``'any'``: the earlier rule,
        count > min_count OR share > min_share (strict, as pulse-study 5.3).

    Returns
    -------
    pandas.DataFrame
        One row per critical instance: ``instance_id``, ``total_queries``, per problem class its count
        and share, and ``critical_types`` (list of classes in severity order). Sorted by instance.
    """
    if mode not in ("all", "any"):
        msg = f"The critical mode (`critical_mode` in the notebooks) must be 'all' or 'any'. Got {mode!r} instead."
        raise ConfigurationError(msg)  # shown in one line in a notebook, like every parameter error
    p = period(settings, window, end=end)
    return _critical(_stats_table(settings, p.start, p.end, None), min_count, min_share, mode)


def _critical(table: pa.Table, min_count: int, min_share: float, mode: CriticalMode) -> pd.DataFrame:
    con = duckdb_connection()
    con.register("ws", table)
    sums = ", ".join(f"{_sum(c + '_queries')} AS {c}" for c in PROBLEM_CLASSES)
    per = con.execute(f"SELECT instance_id, {_sum('total_queries')} AS total_queries, {sums} FROM ws "
                      "GROUP BY instance_id ORDER BY instance_id")
    df = _frame(per)
    flags = []
    for cls in PROBLEM_CLASSES:
        share = df[cls] / df["total_queries"].where(df["total_queries"] > 0)
        df[f"{cls}_share"] = share.fillna(0.0)
        if mode == "all":
            flags.append((df[cls] >= min_count) & (df[f"{cls}_share"] >= min_share))
        else:
            flags.append((df[cls] > min_count) | (df[f"{cls}_share"] > min_share))
    df["critical_types"] = [[c for c, f in zip(PROBLEM_CLASSES, row, strict=True) if f]
                            for row in zip(*flags, strict=True)] if len(df) else []
    return df[df["critical_types"].map(len) > 0].reset_index(drop=True)


def critical_types(settings: Settings, window: str = "24h", instances: Sequence[int] | None = None, *,
                   min_count: int = CRITICAL_MIN_COUNT, min_share: float = CRITICAL_MIN_SHARE,
                   mode: CriticalMode = "all", end: datetime | None = None) -> list[str]:
    """Problem classes critical for at least one of the selected instances, in severity order."""
    p = period(settings, window, end=end)
    df = _critical(_stats_table(settings, p.start, p.end, instances), min_count, min_share, mode)
    found = {c for types in df["critical_types"] for c in types}
    return [c for c in PROBLEM_CLASSES if c in found]


def _sum(column: str) -> str:
    """SQL: ``column`` summed, saturating at int64 as the window sums themselves do (a corrupt duration of
    2**62 ms held one window at the maximum; adding a second window failed the cast, and with it 04's cards)."""
    # not least(): it skips a NULL, and the sum of no rows would read as the maximum
    return f"(CASE WHEN sum({column}) > {_INT64_MAX} THEN {_INT64_MAX} ELSE sum({column}) END)::BIGINT"


def _summary(table: pa.Table) -> dict[str, Any]:
    con = duckdb_connection()
    con.register("ws", table)
    row = con.execute(
        f"SELECT count(DISTINCT instance_id), {_sum('total_queries')}, {_sum('normal_queries')}, "
        f"{_sum('total_spilled_mb')}, {_sum('total_queue_time_ms')}, {_sum('total_exec_time_ms')}, "
        "arg_max(cluster_size, window_start) FILTER (WHERE cluster_size IS NOT NULL) FROM ws"
    ).fetchone() or (0, None, None, None, None, None, None)
    n_inst, total, normal, spilled, queue, exec_ms, size = row
    return {
        "instances": int(n_inst or 0),
        "total_queries": total,
        "cluster_size": size,
        "score": None if not total else normal / total,
        "spilled_mb": spilled,
        "queue_time_ms": queue,
        "queue_ratio": None if not (queue or exec_ms) else queue / (queue + exec_ms),
    }


def _anomaly_count(settings: Settings, start: datetime, end: datetime, instances: list[int] | None) -> int:
    try:
        con = connect_settings(settings, read_only=True)
    except LakehouseNotFoundError:
        # The sink creates the lakehouse with its first anomaly: none yet is 0, as 04's tables count it
        # (its card read "Anomaly queries n/a" above a table reading "Anomalies 0").
        logger.info("no anomaly lakehouse yet path=%s", settings.lakehouse_dir)  # or its PostgreSQL catalog
        return 0
    try:
        row = con.execute(
            f"SELECT count(*) FROM {CATALOG_ALIAS}.anomalies WHERE arrival_timestamp >= $s AND "
            "arrival_timestamp < $e AND ($i IS NULL OR list_contains($i::BIGINT[], instance_id))",
            {"s": start, "e": end, "i": instances}).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def metrics(settings: Settings, window: str = "24h", instances: Sequence[int] | None = None, *,
            end: datetime | None = None) -> dict[str, Any]:
    """Headline metrics of the current period and their change against the previous one.

    Returns
    -------
    dict
        ``period`` (:class:`Period`), and for each of ``instances``, ``total_queries``, ``cluster_size``
        (the latest known, meaningful for one instance: a window whose queries lack it does not blank
        it, and a period without it takes the previous period's; None for a serverless instance),
        ``score`` (share of normal queries, higher is better), ``spilled_mb``, ``queue_time_ms``,
        ``queue_ratio`` (queue / (queue + exec)), ``anomalies`` (0 before the first anomaly): the
        current value and ``<key>_delta`` = current - previous, ``None`` when either side has no value
        (no data is not the same as zero).
    """
    ids = _ids(instances)
    if end is None and ids:
        # the selection's own newest data ends its periods: instances whose data stop earlier than the
        # fleet's read "0 instances" against a previous period holding them all (browser tester, 40th)
        end = data_end(settings, ids)
    p = period(settings, window, end=end)
    table = _stats_table(settings, p.previous_start, p.end, ids)
    cur_mask = pc.greater_equal(table["window_start"], pa.scalar(p.start, table["window_start"].type))
    current_rows, previous_rows = table.filter(cur_mask), table.filter(pc.invert(cur_mask))
    current, previous = _summary(current_rows), _summary(previous_rows)
    if current["cluster_size"] is None and current["total_queries"]:  # no window says it: the size known last
        current["cluster_size"] = previous["cluster_size"]
    if not previous["total_queries"] or not current["total_queries"]:
        # no window before, or none in this period: no change to tell (a count of 0 read "+3", an empty
        # period "Instances 0 (-2)")
        previous = dict.fromkeys(previous)
    # A period without any window has no anomaly count either: "no previous data", not "+67".
    current["anomalies"] = _anomaly_count(settings, p.start, p.end, ids) if current["total_queries"] else None
    previous["anomalies"] = (_anomaly_count(settings, p.previous_start, p.start, ids)
                             if previous["total_queries"] else None)
    out: dict[str, Any] = {"period": p}
    for key, value in current.items():
        out[key] = value
        before = previous[key]
        out[f"{key}_delta"] = None if value is None or before is None else value - before
    out["covered_h"], out["previous_covered_h"] = _covered_hours(current_rows), _covered_hours(previous_rows)
    return out


def _covered_hours(table: pa.Table) -> float:
    """Hours of a period that hold windows (distinct window starts x the window length): a period of
    a replay that began within it holds less data than its length, and its sums are not comparable."""
    from workbench.analysis.windows import DEFAULT_WINDOW_MS

    starts = pc.count_distinct(table["window_start"]).as_py() if table.num_rows else 0
    return round(starts * DEFAULT_WINDOW_MS / 3_600_000, 2)


def coverage_note(metrics: Mapping[str, Any]) -> str:
    """Warnings when the periods of :func:`metrics` hold markedly less data than they span ("" otherwise):
    the current period shorter than its name (a "1week" over a 4-day log), or the previous one shorter
    than the current, whose changes are then not like for like (queries +47,566 against a previous 24 h
    that held 7 h 40 min of log)."""
    now, before = metrics.get("covered_h") or 0.0, metrics.get("previous_covered_h") or 0.0
    notes = []
    period = metrics.get("period")
    length_h = (period.end - period.start).total_seconds() / 3600 if period is not None else 0.0
    if now and now < 0.9 * length_h:  # 04's "1week" card over a 4-day log read like a full week
        notes.append(f"this period holds windows for {now:g} h of its {length_h:g} h (the log is shorter)")
    if before and before < 0.9 * now:
        notes.append(f"the previous period holds windows for {before:g} h, this one for {now:g} h: its changes "
                     "compare unequal spans of data")
    return "; ".join(notes)


def anomalies(settings: Settings, start: datetime | None = None, end: datetime | None = None,
              instances: Sequence[int] | None = None, reason: str | None = None,
              model_version: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Anomalies with ``start <= arrival_timestamp < end``, newest first.

    Columns are those of :data:`workbench.store.lakehouse.ANOMALY_SCHEMA`; ``excess_ms`` is
    ``true_ms - pred_ms`` (positive: slower than predicted) and ``under_ratio`` is
    ``true_ms / max(pred_ms, 1)`` (a ratio, not a percentage).

    Raises
    ------
    LakehouseNotFoundError
        If no anomaly was ever written.
    """
    if limit is not None and limit < 0:
        msg = f"limit must be a non-negative number of rows or None. Got {limit!r} instead."
        raise AnalysisError(msg)
    con = connect_settings(settings, read_only=True)
    try:
        rel = con.execute(
            f"SELECT * FROM {CATALOG_ALIAS}.anomalies WHERE ($s IS NULL OR arrival_timestamp >= $s) "
            "AND ($e IS NULL OR arrival_timestamp < $e) "
            "AND ($i IS NULL OR list_contains($i::BIGINT[], instance_id)) "
            "AND ($r IS NULL OR reason = $r) AND ($m IS NULL OR model_version = $m) "
            "ORDER BY arrival_timestamp DESC, instance_id, query_id LIMIT $l",
            {"s": _aware(start, "start"), "e": _aware(end, "end"), "i": _ids(instances), "r": reason,
             "m": model_version, "l": limit})
        return _frame(rel)
    finally:
        con.close()


def anomaly_values(settings: Settings, column: str) -> list[str]:
    """The distinct non-null values of ``column`` (``reason``, ``model_version``) over every anomaly,
    sorted; ``[]`` before the first anomaly."""
    from workbench.store.lakehouse import ANOMALY_SCHEMA

    if column not in ANOMALY_SCHEMA.names:
        msg = f"column must be one of the anomalies' columns {ANOMALY_SCHEMA.names}. Got {column!r} instead."
        raise AnalysisError(msg)
    try:
        con = connect_settings(settings, read_only=True)
    except LakehouseNotFoundError:
        return []
    try:
        rows = con.execute(f'SELECT DISTINCT "{column}" FROM {CATALOG_ALIAS}.anomalies '
                           f'WHERE "{column}" IS NOT NULL ORDER BY 1').fetchall()
        return [str(row[0]) for row in rows]
    finally:
        con.close()


def window_anomalies(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                     instances: Sequence[int] | None = None, signal: str | None = None) -> pd.DataFrame:
    """Collective anomalies (flagged 10-minute windows) with ``start <= window_start < end``, newest first.

    Columns: ``instance_id``, ``window_start``, ``signal``, ``expected``, ``observed``, ``score``,
    ``reason``, ``inserted_at`` (see :mod:`workbench.analysis.collective`). Empty when none was
    flagged yet (or the lakehouse predates the table).

    Raises
    ------
    LakehouseNotFoundError
        If the lakehouse does not exist yet.
    """
    import duckdb

    con = connect_settings(settings, read_only=True)
    try:
        rel = con.execute(
            f"SELECT * FROM {CATALOG_ALIAS}.window_anomalies WHERE ($s IS NULL OR window_start >= $s) "
            "AND ($e IS NULL OR window_start < $e) "
            "AND ($i IS NULL OR list_contains($i::BIGINT[], instance_id)) AND ($g IS NULL OR signal = $g) "
            "ORDER BY window_start DESC, instance_id, signal",
            {"s": _aware(start, "start"), "e": _aware(end, "end"), "i": _ids(instances), "g": signal})
        return _frame(rel)
    except duckdb.CatalogException:
        return pd.DataFrame(columns=["instance_id", "window_start", "signal", "expected", "observed", "score",
                                     "reason", "inserted_at"])
    finally:
        con.close()


def _threshold_values() -> dict[str, str]:
    return {
        "CPU_RATIO": f"{classify.CPU_RATIO:g}",
        "CPU_EXEC_MS": f"{classify.CPU_EXEC_MS:,}",
        "IO_SCANNED_MB": f"{classify.IO_SCANNED_MB:,}",
        "IO_RATIO": f"{classify.IO_RATIO:g}",
        "IO_EXEC_MS": f"{classify.IO_EXEC_MS:,}",
        "NETWORK_EXEC_MS": f"{classify.NETWORK_EXEC_MS:,}",
        "QUEUE_MIN_MS": f"{classify.QUEUE_MIN_MS:,}",
        "QUEUE_MAX_OPERATORS": f"{classify.QUEUE_MAX_OPERATORS}",
        "CRITICAL_MIN_COUNT": f"{CRITICAL_MIN_COUNT}",
        "CRITICAL_MIN_SHARE_PCT": f"{CRITICAL_MIN_SHARE * 100:g}",
    }


def remediation(problem: str) -> str:
    """Markdown advice for a problem class (or ``'normal'``), quoting the thresholds the code uses.

    The texts live in ``workbench/analysis/remediation/<problem>.md`` with ``{NAME}`` placeholders
    filled from :mod:`workbench.analysis.classify`, so they cannot drift from the rules.
    """
    names = (*PROBLEM_CLASSES, "normal")
    if problem not in names:
        msg = f"problem must be one of {list(names)}. Got {problem!r} instead."
        raise AnalysisError(msg)
    text = resources.files("workbench.analysis").joinpath("remediation", f"{problem}.md").read_text("utf-8")
    return text.format_map(_threshold_values())
