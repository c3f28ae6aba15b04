"""Model versions trained on part of their days: told where the model is shown, for as long as it lasts.

A seek forward skips rows; a day trained meanwhile is fitted without them, and its version stays
(a Reset sends the rows again, but a trained day is not trained again). A tester's two versions were
fitted on the same 3,161 rows of 36,141, the whole log was then scored by them (847 anomalies against
238), and once the Reset had sent the skipped rows nothing said so any more. :func:`partly_trained`
compares each version's training window (``model.json``: ``window_days``, ``rows.window``: its rows
that ran and were not aborted) with the queries not aborted that the stream analytics counted for the
same days since: a version that saw less than :data:`MIN_SHARE` of them is named (the tester's saw 9 %
and 17 %). The margin covers late rows past the training's grace and queries without an execution
time (counted, not trained on); archived windows only lower the count (a version is then not named).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_QUERIES", "MIN_SHARE", "PartlyTrained", "partly_trained", "partly_trained_versions"]

#: A version that saw less than this share of its window's queries counted now is named.
MIN_SHARE = 0.5
#: ... when its window holds at least this many (a handful of late rows is no finding).
MIN_QUERIES = 500


@dataclass(frozen=True)
class PartlyTrained:
    """A version, the rows its training window held, and the queries counted for those days now."""

    version: str
    trained_rows: int
    counted_queries: int

    def __str__(self) -> str:
        share = self.trained_rows / self.counted_queries
        return (f"{self.version} was trained on {self.trained_rows:,} rows of its days, which hold "
                f"{self.counted_queries:,} queries now ({share:.0%})")


def partly_trained(versions: Iterable[tuple[str, Mapping[str, Any]]], queries_per_day: Mapping[dt.date, int], *,
                   min_share: float = MIN_SHARE, min_queries: int = MIN_QUERIES) -> list[PartlyTrained]:
    """The versions (``(id, model.json)``, oldest first) whose training saw less than ``min_share`` of the
    queries ``queries_per_day`` counts for their window days; versions without that metadata are skipped."""
    found = []
    for version, meta in versions:
        rows = meta["rows"].get("window") if isinstance(meta.get("rows"), dict) else None
        days = meta.get("window_days") or []
        if not isinstance(rows, int) or not days:
            continue
        try:
            counted = sum(queries_per_day.get(dt.date.fromisoformat(day), 0) for day in days)
        except (TypeError, ValueError):
            continue
        if counted >= min_queries and rows < min_share * counted:
            found.append(PartlyTrained(version, rows, counted))
    return found


def partly_trained_versions(settings: Any) -> list[PartlyTrained]:
    """:func:`partly_trained` for the home's registry and window store (empty while either is missing)."""
    from workbench.ml.registry import ModelRegistry
    from workbench.store.exceptions import StoreNotFoundError
    from workbench.store.window_stats import WindowStatsStore

    registry = ModelRegistry(settings.models_dir)
    versions = registry.versions()
    if not versions:
        return []
    try:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            per_day = store.completed_queries_per_day()
    except StoreNotFoundError:
        return []
    metas = []
    for version in versions:
        try:
            metas.append((version, registry.info(version)))
        except Exception:  # a damaged version is named elsewhere (unreadable_versions)
            continue
    return partly_trained(metas, per_day)
