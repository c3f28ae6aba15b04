"""Compaction and retention of settled shard days, once per event-time day.

Once the event-time watermark (minus the training grace) enters a new day,
:func:`workbench.store.shards.maintain` compacts the days that are a day past their end into one
file per partition and deletes days older than ``shard_retention_days`` (never fewer than the
training window + 1 days, so training always finds its window).
"""

from __future__ import annotations

import datetime as dt
import logging

from workbench.config import Settings
from workbench.pipeline._status import AppStatus

__all__ = ["ShardMaintenance"]

logger = logging.getLogger(__name__)


class ShardMaintenance:
    """Runs :func:`~workbench.store.shards.maintain` when the watermark day moves."""

    def __init__(self, settings: Settings, status: AppStatus, window_days: int) -> None:
        self.settings = settings
        self.status = status
        self.window_days = window_days
        self.done_for: dt.date | None = None

    def run(self, watermark: dt.date) -> None:
        """Compact and apply retention for ``watermark`` (a no-op when already done for that day)."""
        if watermark == self.done_for:
            return
        from workbench.store.shards import maintain

        self.done_for = watermark
        keep = self.settings.shard_retention_days
        if keep is not None and keep <= self.window_days:
            logger.warning("shard_retention_days=%d is shorter than the training window; keeping %d days",
                           keep, self.window_days + 1)
            keep = self.window_days + 1
        done = maintain(self.settings.shards_dir, watermark, retention_days=keep)
        self.status.add("shard_days_compacted", len(done["compacted"]))
        self.status.add("shard_days_deleted", len(done["deleted"]))
