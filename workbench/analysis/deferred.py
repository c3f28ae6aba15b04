"""The per-query rules of the scoring app's deferred step, in their order, for a settled day.

A statement that stays slower (:mod:`workbench.analysis.persistence`), a statement that creeps
(:mod:`workbench.analysis.trend`), a part of an instance that runs slower or waits longer
(:mod:`workbench.analysis.slower_groups`), another instance's workload
(:mod:`workbench.analysis.moved_statements`) and a run on a never-seen instance far beyond the instance's
record of the day (:mod:`workbench.analysis.instance_record`) flag rows of the same day, in this order; a
row gets one alert, the first rule's. A rule is one entry of :data:`DEFERRED_RULES` (its metric, reasons,
columns and flagging function); the reasons, the columns the step reads and ``evaluate``'s counts follow
from the entries. The scoring app's step, the chaos
oracle (:func:`deferred_runs`, over shards) and the evaluations (:func:`deferred_flags`, over a log
scored offline) all take the rules from here, so the order cannot differ between what the stream
stores and what ``workbench evaluate`` counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.analysis._judged import offline_scored
from workbench.analysis.instance_record import RECORD_COLUMNS, RECORD_REASON, RecordParams, instance_record_runs
from workbench.analysis.moved_statements import MOVED_COLUMNS, MOVED_REASON, MovedParams, moved_statement_runs
from workbench.analysis.persistence import PERSISTENCE_COLUMNS, PERSISTENCE_REASON, PersistenceParams, persistent_runs
from workbench.analysis.slower_groups import (
    GROUP_COLUMNS,
    GROUP_REASONS,
    GroupParams,
    slower_group_runs,
)
from workbench.analysis.trend import TREND_COLUMNS, TREND_REASON, TrendParams, creeping_runs

__all__ = [
    "DEFERRED_COLUMNS",
    "DEFERRED_REASONS",
    "DEFERRED_RULES",
    "DayInputs",
    "DeferredRule",
    "deferred_flags",
    "deferred_reasons",
    "deferred_runs",
    "split_reasons",
]

#: ``(home, home_ms)`` per row: :meth:`workbench.ml.features.FeatureBuilder.statement_homes`.
Homes = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DayInputs:
    """What the rules read of a settled day besides its scored rows, per row unless said otherwise.

    ``known``: the version's expectation rests on the statement's own history (None: every row's).
    ``queue_reference``: the usual ``log1p`` wait at that hour. ``scales``: ``model_version -> (min_scale,
    max_scale)`` of each version's detector. ``usual_hours``: the groups that run slower or wait longer at an
    hour as a rule (per version). ``homes``: :data:`Homes` (None: no row has a home). ``unseen``: the version
    never saw the row's instance (None: no row).
    """

    known: np.ndarray | None = None
    queue_reference: np.ndarray | None = None
    scales: Mapping[str, tuple[float, float]] | None = None
    usual_hours: pd.DataFrame | None = None
    homes: Homes | None = None
    unseen: np.ndarray | None = None


@dataclass(frozen=True)
class DeferredRule:
    """One rule of the deferred step: an entry of :data:`DEFERRED_RULES`.

    ``metric``: what ``workbench evaluate`` calls its alerts. ``reasons``: the reasons its alerts carry.
    ``columns``: the shard columns it reads. ``flag(rows, day, params, taken)``: its flagged runs (the columns of
    :data:`~workbench.analysis._judged.RULE_RESULT` at least) among ``rows`` but ``taken`` (the earlier rules'),
    with its constants ``params`` (None: the defaults); None when ``day`` lacks what it reads.
    """

    metric: str
    reasons: tuple[str, ...]
    columns: tuple[str, ...]
    flag: Callable[[pa.Table, DayInputs, Any, np.ndarray], pd.DataFrame | None]


#: The rules in their order, by the name their constants go by in :func:`deferred_runs`. The first one's
#: alerts are counted apart (``persistent_anomalies``), the others' together (``group_anomalies``).
DEFERRED_RULES: dict[str, DeferredRule] = {
    "persistence": DeferredRule(
        "persistent runs", (PERSISTENCE_REASON,), PERSISTENCE_COLUMNS,
        lambda rows, day, params, taken: persistent_runs(rows, day.known, params, day.scales)),
    "trend": DeferredRule(
        "creeping runs", (TREND_REASON,), TREND_COLUMNS,
        lambda rows, day, params, taken: creeping_runs(rows, day.known, params, day.scales, taken)),
    "groups": DeferredRule(
        "slower group queries", GROUP_REASONS, GROUP_COLUMNS,
        lambda rows, day, params, taken: slower_group_runs(rows, day.known, params, day.scales, taken,
                                                           day.queue_reference, day.usual_hours)),
    "moved": DeferredRule(
        "moved statement runs", (MOVED_REASON,), MOVED_COLUMNS,
        lambda rows, day, params, taken: None if day.homes is None else moved_statement_runs(
            rows, day.homes[0], day.homes[1], params, taken)),
    "record": DeferredRule(
        "beyond-record runs", (RECORD_REASON,), RECORD_COLUMNS,
        lambda rows, day, params, taken: None if day.unseen is None else instance_record_runs(
            rows, day.unseen, params, taken)),
}
#: The reasons of the alerts the step raises, the persistence rule's first (a settled day's are replaced as a
#: whole when it is judged again).
DEFERRED_REASONS = tuple(reason for rule in DEFERRED_RULES.values() for reason in rule.reasons)
#: Shard columns :func:`deferred_runs` reads.
DEFERRED_COLUMNS = tuple(dict.fromkeys(column for rule in DEFERRED_RULES.values() for column in rule.columns))


def deferred_runs(rows: pa.Table, known: np.ndarray | None, queue_reference: np.ndarray | None, *,
                  persistence: PersistenceParams | None = None, groups: GroupParams | None = None,
                  scales: Mapping[str, tuple[float, float]] | None = None,
                  usual_hours: pd.DataFrame | None = None, homes: Homes | None = None,
                  moved: MovedParams | None = None, trend: TrendParams | None = None,
                  unseen: np.ndarray | None = None, record: RecordParams | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(persistent, slower)``: the runs of one day of scored ``rows`` each rule of :data:`DEFERRED_RULES`
    flags, in order, each among the rows the earlier ones left: the first rule's
    (:func:`~workbench.analysis.persistence.persistent_runs`), then the others' together
    (:func:`~workbench.analysis.trend.creeping_runs`, :func:`~workbench.analysis.slower_groups.slower_group_runs`,
    :func:`~workbench.analysis.moved_statements.moved_statement_runs` when ``homes`` is given,
    :func:`~workbench.analysis.instance_record.instance_record_runs` when ``unseen`` is given). ``known``,
    ``queue_reference``, ``scales``, ``usual_hours``, ``homes`` and ``unseen`` as :class:`DayInputs` holds them;
    the other keywords are the rules' constants (None: the defaults)."""
    day = DayInputs(known=known, queue_reference=queue_reference, scales=scales, usual_hours=usual_hours,
                    homes=homes, unseen=unseen)
    params = {"persistence": persistence, "trend": trend, "groups": groups, "moved": moved, "record": record}
    taken = np.zeros(rows.num_rows, dtype=bool)
    parts = []
    for name, rule in DEFERRED_RULES.items():
        found = rule.flag(rows, day, params.get(name), taken)
        if found is not None:
            taken[found["row"].to_numpy()] = True
            parts.append(found)
    persistent, rest = parts[0], parts[1:]
    found = [part for part in rest if not part.empty]
    if not found:
        return persistent, rest[0]
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
