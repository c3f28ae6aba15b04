"""Per-partition backpressure: a partition that got ahead of training pauses until training catches up.

The selection rule (:mod:`workbench.ml.selection`) gives each event day its own version, and events
of a day whose version does not exist yet are stored unscored and scored later. So that this
backlog stays bounded (about ``every_n_days + 1`` days on disk), a partition whose newest stored
event day the rule does not accept yet (:meth:`Scorer.accepts`) stops fetching, and fetches again
once the training it waits for is done. Only that partition stops: Quix's own sink backpressure
would pause and rewind every partition, including the slow ones the training watermark waits
for (a deadlock). The rows it delivered are stored, so nothing is lost and memory stays bounded;
the backlog waits in Kafka, and a replay that outruns training is scored as fast as training allows.
A paused partition is silent but not caught up, so it keeps holding the training watermark back
(:meth:`ScoringSink.watermark_us`), also for a while after it resumes, until it delivers again.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from workbench.pipeline._quix import PartitionFlow
from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._training import day_of

__all__ = ["PartitionPacer", "held_day"]

logger = logging.getLogger(__name__)

_DAY_US: Final = 86_400_000_000


def held_day(table: pa.Table, scorer: Any, schedule: Any, *, hold: bool) -> str | None:
    """Called before a batch is scored: starts the training cadence at the batch's first event day
    (else the very first batch would be scored before the cadence is known); with ``hold``, also
    returns the first event day of the batch the rule does not accept yet (the sink then raises
    Quix's sink backpressure), else None.
    """
    ts = table.column("arrival_timestamp").cast(pa.int64())
    lo, hi = int(pc.min(ts).as_py()), int(pc.max(ts).as_py())
    if schedule is None:
        return None
    schedule.note_first_event(lo)
    cadence = schedule.cadence()
    if cadence is None or not hold:
        return None
    for d in range(lo // _DAY_US, hi // _DAY_US + 1):
        if not scorer.accepts(day_of(d * _DAY_US), cadence):
            return day_of(d * _DAY_US).isoformat()
    return None


class PartitionPacer:
    """Pauses and resumes the event topic's partitions by the rule (see the module docstring)."""

    def __init__(self, flow: PartitionFlow, topic: str, status: AppStatus) -> None:
        self.flow = flow
        self.topic = topic
        self.status = status
        self.paused: set[int] = set()
        status.counters.setdefault("partition_pauses", 0)
        status.info["paused_partitions"] = []

    def pace(self, sink: Any, scorer: Any, cadence: Any) -> None:
        """Pause each partition whose newest event day is not accepted; resume it once it is."""
        if cadence is None or scorer is None:
            return
        for partition, newest_us in list(sink.partition_max_us.items()):
            day = day_of(newest_us)
            held = not scorer.accepts(day, cadence)
            if held == (partition in self.paused):
                continue
            try:
                if held:
                    self.flow.pause(self.topic, partition)
                    self.paused.add(partition)
                    sink.held_partitions.add(partition)  # silent, not caught up: it holds the watermark
                    self.status.add("partition_pauses")
                    logger.info("partition paused until training catches up partition=%d day=%s", partition, day)
                else:
                    self.flow.resume(self.topic, partition)
                    self.paused.discard(partition)
                    sink.held_partitions.discard(partition)
                    # resumed: not idle yet, nor silent (its backlog still holds the watermark)
                    sink.mark_seen(partition)
                    sink.last_message_at = sink.partition_seen[partition]
                    logger.info("partition resumed partition=%d day=%s", partition, day)
            except Exception as exc:  # not assigned any more (rebalance): nothing to pace
                logger.warning("cannot pause/resume partition=%d error=%s", partition, exc)
                self.paused.discard(partition)
                sink.held_partitions.discard(partition)
        self.status.info["paused_partitions"] = sorted(self.paused)
