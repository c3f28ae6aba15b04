"""Rescoring the stored unscored rows once their version exists, in a helper thread.

Rows of an event day whose version (by the rule of :mod:`workbench.ml.selection`) does not
exist yet are stored with null scores; the sink records their event days in
:class:`~._days.UnscoredDays` before their offsets can be committed. As soon as a day's final
version exists (``scorer.ready(day, cadence)``), :class:`Rescorer` runs
:func:`~workbench.store.shards.rescore_unscored` over the ready days with an event-time scorer,
so each row gets its own day's version exactly as the stream would have given it, publishing
each rescored shard's anomalies (acknowledged) *before* the shard is rewritten as scored, so a
crash in between only re-publishes. The consuming thread never waits for it; an error is raised
in the main thread by :meth:`raise_error`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import pyarrow as pa

from workbench.config import Settings
from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._days import UnscoredDays
from workbench.pipeline.scoring._publisher import AnomalyPublisher

__all__ = ["Rescorer"]

logger = logging.getLogger(__name__)

#: Seconds before a day that had no readable version is tried again.
UNSCORABLE_RETRY_S = 10.0


class _PublishingScorer:
    """A scorer for :func:`rescore_unscored` that publishes each rescored chunk's anomalies first."""

    def __init__(self, scorer: Any, publisher: AnomalyPublisher, status: AppStatus) -> None:
        self.scorer = scorer
        self.publisher = publisher
        self.status = status

    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        scored = self.scorer.score(batch)
        n = self.publisher.publish_scored(scored)  # acknowledged before the shard is rewritten
        self.status.add("rescore_anomalies", n)  # only this thread writes this (pre-created) counter
        if self.publisher.rejected:  # the stored row stays; its anomaly cannot be expressed
            logger.warning("rescoring: %d anomaly message(s) refused by the contract, first: %s",
                           len(self.publisher.rejected), self.publisher.rejected[0][1][:200])
            self.publisher.rejected.clear()
        return scored


class Rescorer:
    """Starts and watches the rescoring thread (see the module docstring)."""

    def __init__(self, settings: Settings, unscored: UnscoredDays, status: AppStatus) -> None:
        self.settings = settings
        self.unscored = unscored
        self.status = status
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0  # monotonic end of the last pass, once its days left the unscored set
        self.not_before = 0.0  # monotonic: a pass that found no readable version for a day waits till then

    @property
    def running(self) -> bool:
        """True while the thread works."""
        return self.thread is not None and self.thread.is_alive()

    def ready_days(self, scorer: Any, cadence: Any) -> set[str]:
        """Days with unscored rows whose final version exists now (status: the others wait for a model)."""
        days = self.unscored.snapshot()
        if not days or scorer is None:
            self.status.info["waiting_for_model"] = []
            return set()
        ready = {d for d in days if scorer.ready(dt.date.fromisoformat(d), cadence)}
        self.status.info["waiting_for_model"] = sorted(days - ready)  # stored unscored until their version exists
        return ready

    def maybe_start(self, scorer: Any, cadence: Any) -> None:
        """Start rescoring the days :meth:`ready_days` gives, if any (main thread)."""
        if self.running or time.monotonic() < self.not_before:
            return
        days = self.ready_days(scorer, cadence)
        if not days:
            return
        self.thread = threading.Thread(target=self._run, args=(days, cadence), name="rescore", daemon=True)
        self.thread.start()

    def raise_error(self) -> None:
        """Re-raise, in the caller's thread, what made the last rescoring fail."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def join(self) -> None:
        """Wait for the thread, then re-raise its error."""
        if self.thread is not None:
            self.thread.join()
        self.raise_error()

    def _run(self, days: set[str], cadence: Any) -> None:
        from workbench.ml.scorer import Scorer
        from workbench.store.shards import rescore_unscored

        t0 = time.perf_counter()
        marks = self.unscored.marks(days)  # before listing any shard: rows stored later keep their day
        publisher = AnomalyPublisher(self.settings)  # its own producer and delivery-error list
        try:
            # each row gets its day's version, like the stream (cadence as when the days were found ready)
            scorer = Scorer(self.settings.models_dir, by_event_time=True, cadence=lambda: cadence, intra_op_threads=1)
            rows = rescore_unscored(self.settings.shards_dir, _PublishingScorer(scorer, publisher, self.status),
                                    days=sorted(days))
            publisher.close()
        except BaseException as exc:  # surfaced in the main thread by raise_error
            logger.exception("rescoring failed days=%s", sorted(days))
            self.error = exc
            return
        # A day left without any readable version (its only one damaged since it was listed) keeps its rows
        # unscored: it stays in the set, for the pass after a version comes (or the damaged one is repaired).
        unscorable = {d for d in days if scorer.version_for(dt.date.fromisoformat(d)) is None}
        if unscorable:
            logger.warning("rescoring: no readable model version for days %s; their rows stay unscored until one is "
                           "(tried again in %.0f s)", sorted(unscorable), UNSCORABLE_RETRY_S)
            self.not_before = time.monotonic() + UNSCORABLE_RETRY_S
        kept = days - self.unscored.remove({d: m for d, m in marks.items() if d not in unscorable})
        self.finished_at = time.monotonic()  # a residual pass that started before this saw the days waiting
        if kept:
            logger.info("rescoring: days %s got unscored rows meanwhile; they stay for the next pass", sorted(kept))
        self.status.add("rescored", rows)  # only this thread writes this (pre-created) counter
        logger.info("rescored unscored events rows=%d days=%s seconds=%.2f", rows, sorted(days),
                    time.perf_counter() - t0)
