"""The scoring sink's per-message-isolating steps: decode, event-time guard, score.

Split out of ``_sink`` (buffering, storing, publishing) so each module has one job. Each step
returns the rows that go on plus ``(message index, reason)`` for the messages that go to the
dead-letter topic, so one bad message never fails its batch (see :mod:`._sink`).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pyarrow as pa

from workbench.data import codec
from workbench.pipeline._app import INFRASTRUCTURE_ERRORS
from workbench.pipeline._eventtime import EventTimeGuard

__all__ = ["decode_messages", "guard_event_time", "score_by_message"]

_KAFKA: Final = ["kafka_partition", "kafka_offset"]


def decode_messages(values: list[Any], keys: list[Any], headers: list[Any], offset_list: list[int],
                    partition: int) -> tuple[pa.Table, list[tuple[int, str]], tuple[tuple[int, int], ...]]:
    """All valid rows of the messages (+ ``kafka_*`` columns), ``(message index, reason)`` of the others,
    and ``(message index, end µs)`` of the end-of-log markers among them
    (:func:`~workbench.data.codec.end_of_log_message`).

    The messages are given as parallel lists of their values, keys, headers (None: no headers) and offsets.
    """
    decoded = codec.decode_values(values, headers=headers, keys=keys)
    index = np.asarray(decoded.source_index, dtype=np.int64)
    offsets = np.fromiter(offset_list, dtype=np.int64, count=len(offset_list))
    table = pa.Table.from_batches([decoded.batch])
    table = table.append_column("kafka_partition", pa.array(np.full(len(index), partition, np.int32)))
    table = table.append_column("kafka_offset", pa.array(offsets[index] if len(index) else offsets[:0]))
    return table.append_column("_message", pa.array(index)), decoded.errors, decoded.end_of_log_markers


def guard_event_time(guard: EventTimeGuard, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Drop the messages whose event time is implausible (vectorised per message)."""
    if not table.num_rows:
        return table, []
    ts = table.column("arrival_timestamp").combine_chunks().view(pa.int64()).to_numpy()
    msg = table.column("_message").to_numpy()
    starts = np.flatnonzero(np.r_[True, msg[1:] != msg[:-1]])
    lo, hi = np.minimum.reduceat(ts, starts), np.maximum.reduceat(ts, starts)
    reference = guard.batch_reference(ts, len(starts))
    absolute = (lo < guard.min_us) | (hi >= guard.max_us)
    bad = absolute.copy()
    if reference is not None:
        bad |= hi > reference + guard.horizon_us
        if guard.past_horizon_us is not None:
            bad |= lo < reference - guard.past_horizon_us
    rejects = []
    for i in np.flatnonzero(bad):  # rare: only implausible messages are visited
        if not absolute[i] and guard.note_ahead(int(hi[i])):
            bad[i] = False  # a run of such messages re-anchored the watermark (the stream jumped)
            continue
        rejects.append((int(msg[starts[i]]), guard.reason(int(lo[i]), int(hi[i]), reference) or ""))
    if rejects:
        guard.rejected += len(rejects)
        table = table.filter(pa.array(~np.repeat(bad, np.diff(np.r_[starts, len(msg)]))))
    if len(hi[~bad]):
        guard.advance(int(hi[~bad].max()))
    return table, rejects


def score_by_message(scorer: Any, table: pa.Table) -> tuple[pa.Table | None, list[tuple[int, str]]]:
    """Score ``table``; a failure not caused by infrastructure is narrowed down to its message."""
    try:
        scored = pa.Table.from_batches([scorer.score(table.drop_columns([*_KAFKA, "_message"]))])
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        messages = np.unique(table.column("_message").to_numpy())
        if len(messages) == 1:
            return None, [(int(messages[0]), f"processing_error: scoring failed: {type(exc).__name__}: {exc}")]
        column = table.column("_message").to_numpy()
        half = messages[len(messages) // 2]
        parts, errors = [], []
        for mask in (column < half, column >= half):
            part, errs = score_by_message(scorer, table.filter(pa.array(mask)))
            errors += errs
            if part is not None:
                parts.append(part)
        return (pa.concat_tables(parts) if parts else None), errors
    for name in (*_KAFKA, "_message"):
        scored = scored.append_column(name, table.column(name))
    return scored, []
