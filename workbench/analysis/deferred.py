"""The per-query rules of the scoring app's deferred step, in their order, for a settled day.

A statement that stays slower (:mod:`workbench.analysis.persistence`), a statement that creeps
(:mod:`workbench.analysis.trend`), a part of an instance that runs slower or waits longer
(:mod:`workbench.analysis.slower_groups`), another instance's workload
(:mod:`workbench.analysis.moved_statements`) and a run on a never-seen instance far beyond the instance's
record of the day (:mod:`workbench.analysis.instance_record`) flag rows of the same day, in this order; a
row gets one alert, the first rule's. The scoring app's step, the chaos
oracle (:func:`deferred_runs`, over shards) and the evaluations (:func:`deferred_flags`, over a log
scored offline) all take the rules from here, so the order cannot differ between what the stream
stores and what ``workbench evaluate`` counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.analysis._judged import offline_scored
from workbench.analysis.instance_record import RECORD_COLUMNS, RECORD_REASON, RecordParams, instance_record_runs
from workbench.analysis.moved_statements import MOVED_COLUMNS, MOVED_REASON, MovedParams, moved_statement_runs
from workbench.analysis.persistence import PERSISTENCE_COLUMNS, PERSISTENCE_REASON, PersistenceParams, persistent_runs
from workbench.analysis.slower_groups import (
    GROUP_COLUMNS,
    GROUP_REASON,
    QUEUE_GROUP_REASON,
    GroupParams,
    slower_group_runs,
)
from workbench.analysis.trend import TREND_COLUMNS, TREND_REASON, TrendParams, creeping_runs

__all__ = ["DEFERRED_COLUMNS", "DEFERRED_REASONS", "deferred_flags", "deferred_reasons", "deferred_runs",
           "split_reasons"]

#: The reasons of the alerts the step raises, the persistence rule's first (a settled day's are replaced as a
#: whole when it is judged again).
DEFERRED_REASONS = (PERSISTENCE_REASON, GROUP_REASON, QUEUE_GROUP_REASON, MOVED_REASON, TREND_REASON, RECORD_REASON)
#: Shard columns :func:`deferred_runs` reads.
DEFERRED_COLUMNS = tuple(dict.fromkeys(PERSISTENCE_COLUMNS + TREND_COLUMNS + GROUP_COLUMNS + MOVED_COLUMNS
                                       + RECORD_COLUMNS))
#: ``(home, home_ms)`` per row: :meth:`workbench.ml.features.FeatureBuilder.statement_homes`.
Homes = tuple[np.ndarray, np.ndarray]


def deferred_runs(rows: pa.Table, known: np.ndarray | None, queue_reference: np.ndarray | None, *,
                  persistence: PersistenceParams | None = None, groups: GroupParams | None = None,
                  scales: Mapping[str, tuple[float, float]] | None = None,
                  usual_hours: pd.DataFrame | None = None, homes: Homes | None = None,
                  moved: MovedParams | None = None, trend: TrendParams | None = None,
                  unseen: np.ndarray | None = None, record: RecordParams | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(persistent, slower)``: :func:`~workbench.analysis.persistence.persistent_runs` of one day of
    scored ``rows``, then :func:`~workbench.analysis.trend.creeping_runs`,
    :func:`~workbench.analysis.slower_groups.slower_group_runs`,
    :func:`~workbench.analysis.moved_statements.moved_statement_runs` (``homes``; None: no row has a
    home) and :func:`~workbench.analysis.instance_record.instance_record_runs` (``unseen``: per row, its
    version never saw its instance; None: no row), each of the rows the earlier ones left (``known``,
    ``queue_reference``, ``scales`` and ``usual_hours`` as those take them); the last four's runs together
    in ``slower``."""
    persistent = persistent_runs(rows, known, persistence, scales)
    taken = np.zeros(rows.num_rows, dtype=bool)
    taken[persistent["row"].to_numpy()] = True
    creeping = creeping_runs(rows, known, trend, scales, taken)
    taken[creeping["row"].to_numpy()] = True
    parts = [creeping, slower_group_runs(rows, known, groups, scales, taken, queue_reference, usual_hours)]
    if homes is not None:
        taken[parts[-1]["row"].to_numpy()] = True
        parts.append(moved_statement_runs(rows, homes[0], homes[1], moved, taken))
    if unseen is not None:
        taken[parts[-1]["row"].to_numpy()] = True
        parts.append(instance_record_runs(rows, unseen, record, taken))
    found = [part for part in parts if not part.empty]
    if not found:
        return persistent, parts[1]
    return persistent, found[0] if len(found) == 1 else pd.concat(found, ignore_index=True)


def deferred_flags(table: pa.Table, pred_mean_ms: np.ndarray, pred_q_ms: np.ndarray, alerted: np.ndarray,
                   known: np.ndarray, version: str, queue_reference: np.ndarray | None, *,
                   persistence: PersistenceParams | None = None, groups: GroupParams | None = None,
                   scales: Mapping[str, tuple[float, float]] | None = None,
                   usual_hours: pd.DataFrame | None = None, homes: Homes | None = None,
                   unseen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one day of a log scored offline by one ``version`` (its ``pred_mean_ms``,
    ``pred_q_ms`` and per-query decision ``alerted``): ``(persistent, group)``, flagged as the scoring
    app's step flags it (for ``workbench evaluate`` and the benchmarks, which score a log's rows
    rather than read shards)."""
    return split_reasons(deferred_reasons(table, pred_mean_ms, pred_q_ms, alerted, known, version, queue_reference,
                                          persistence=persistence, groups=groups, scales=scales,
                                          usual_hours=usual_hours, homes=homes, unseen=unseen))


def split_reasons(reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`deferred_reasons` as ``(persistent, group)`` masks."""
    persistent = reasons == PERSISTENCE_REASON
    return persistent, (reasons != None) & ~persistent  # noqa: E711 (elementwise over an object array)


def deferred_reasons(table: pa.Table, pred_mean_ms: np.ndarray, pred_q_ms: np.ndarray, alerted: np.ndarray,
                     known: np.ndarray, version: str, queue_reference: np.ndarray | None, *,
                     persistence: PersistenceParams | None = None, groups: GroupParams | None = None,
                     scales: Mapping[str, tuple[float, float]] | None = None,
                     usual_hours: pd.DataFrame | None = None, homes: Homes | None = None,
                     unseen: np.ndarray | None = None) -> np.ndarray:
    """Per row, as :func:`deferred_flags` takes them: the reason the scoring app's step flags it with
    (one of :data:`DEFERRED_REASONS`), None where it flags nothing."""
    scored = offline_scored(table, DEFERRED_COLUMNS, pred_mean_ms, pred_q_ms, alerted, version)
    persistent, group = deferred_runs(scored, known, queue_reference, persistence=persistence, groups=groups,
                                      scales=scales, usual_hours=usual_hours, homes=homes, unseen=unseen)
    reasons = np.full(table.num_rows, None, dtype=object)
    reasons[persistent["row"].to_numpy()] = PERSISTENCE_REASON
    reasons[group["row"].to_numpy()] = group["reason"].to_numpy(dtype=object)
    return reasons
