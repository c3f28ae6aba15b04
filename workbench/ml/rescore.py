"""Versioned rescoring: score stored shards with one model version, write its anomalies to the lakehouse.

``rescore(settings, "v0002-2024-03-02", start=..., end=..., instances=[...])`` reads the shards of
every event day in ``[start, end)`` (one day at a time, so memory stays bounded), scores them with
the pinned version, turns the flagged rows into ``redshift.anomalies`` messages and lakehouse rows
exactly like the stream does (the contract's ``anomaly_messages``, ``encode_anomaly`` and
``decode_anomalies`` of :mod:`workbench.pipeline.contracts`), and inserts them with the lakehouse's
insert-if-absent writer. The lakehouse key is ``(instance_id, query_id, model_version)``, so V's
anomalies sit next to the other versions' and a second run inserts nothing (idempotent).

Resumable: after each day is written, the day is recorded in
``<state_dir>/rescore/<version>.json`` under the run's signature (range + instances), with the names
of the shard files it read; an interrupted run (Ctrl-C, kill -9) started again with the same
arguments skips the finished days whose files are still the same (a day the stream stored more
rows of meanwhile, or compacted, is scored again: insert-if-absent makes that exact).
A run that completes clears its record, so the next identical call scores everything again
(and inserts nothing new).
The shards are not modified: rescoring with another version is an analysis, not a correction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from workbench._fs import write_atomic
from workbench.config import Settings
from workbench.ml.exceptions import MLError
from workbench.ml.registry import ModelRegistry

__all__ = ["RescoreResult", "rescore"]

logger = logging.getLogger(__name__)

_TS = pa.timestamp("us", tz="UTC")


@dataclass
class RescoreResult:
    """What one :func:`rescore` call did."""

    version: str
    days: list[str] = field(default_factory=list)  # days scored by this call
    skipped_days: list[str] = field(default_factory=list)  # finished by an earlier (interrupted) call
    rows: int = 0
    anomalies: int = 0  # flagged rows of the days scored by this call
    inserted: int = 0  # of them, rows new to the lakehouse
    refused: int = 0  # flagged rows the anomaly contract refuses (logged; the stream dead-letters them)


def _utc(value: dt.datetime | dt.date | str | None) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            msg = f"rescore needs ISO-8601 times such as 2024-03-05 or 2024-03-05T12:00. Got {value!r} instead."
            raise MLError(msg) from None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


#: Attempts at one day's lakehouse write while another writer's commit holds the catalog (1, 2, 4, ... s apart).
BUSY_ATTEMPTS = 6


def _write_retrying(lake: Any, rows: pa.Table) -> int:
    """``lake.write(rows)``, tried again while the catalog is busy: two rescores at once (or a rescore beside
    the anomaly sink) stopped one of them with "the lakehouse catalog was locked ... retry later" (exit 2).
    The write is insert-if-absent and rolled back whole on a conflict, so a retry is exact."""
    import time

    from workbench.store.exceptions import LakehouseBusyError

    for attempt in range(BUSY_ATTEMPTS):
        try:
            return int(lake.write(rows))
        except LakehouseBusyError as exc:
            if attempt == BUSY_ATTEMPTS - 1:
                raise
            logger.info("lakehouse busy (%s); retrying the day's write in %d s", exc, 2**attempt)
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _shard_files(settings: Settings, day: dt.date) -> list[str]:
    """The names of a day's live shard files: new rows of the day come in new files."""
    from workbench.store.shards import shard_paths

    return [path.name for path in shard_paths(settings.shards_dir, [day])]


def _signature(start: dt.datetime | None, end: dt.datetime | None, instances: Sequence[int] | None) -> str:
    text = json.dumps([str(start), str(end), sorted(instances) if instances else None])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rescore(settings: Settings, version: str, *, start: dt.datetime | dt.date | str | None = None,
            end: dt.datetime | dt.date | str | None = None, instances: Sequence[int] | None = None,
            progress: bool | Callable[[int, int, str], None] = True, intra_op_threads: int = 2) -> RescoreResult:
    """Score the shards of ``[start, end)`` with ``version`` and store its anomalies in the lakehouse.

    Parameters
    ----------
    settings : Settings
        Shards, models, lakehouse and state folders.
    version : str
        A version id or ``"current"``.
    start, end : datetime, date or ISO text, optional
        Event-time range (UTC; naive means UTC; ``end`` exclusive). Default: every stored day.
    instances : sequence of int, optional
        Only these instance ids.
    progress : bool or callable, default=True
        A tqdm bar (terminal and notebooks), or ``callable(done_days, total_days, day)``.

    Returns
    -------
    RescoreResult
    """
    from workbench.ml.scorer import Scorer
    from workbench.pipeline.contracts import anomaly_messages, decode_anomalies, encode_anomaly
    from workbench.pipeline.exceptions import AnomalyContractError
    from workbench.store.lakehouse import AnomalyLakehouse
    from workbench.store.shards import list_days, read_shards

    lo, hi = _utc(start), _utc(end)  # the arguments first: a typo is named before the registry is asked
    if lo is not None and hi is not None and hi <= lo:
        msg = f"rescore needs start < end. Got start={lo.isoformat()} and end={hi.isoformat()}."
        raise MLError(msg)
    registry = ModelRegistry(settings.models_dir)
    version = registry.resolve(version)
    days = [d for d in list_days(settings.shards_dir)
            if (lo is None or d >= lo.date()) and (hi is None or dt.datetime.combine(d, dt.time(), dt.UTC) < hi)]
    state_path = settings.state_dir / "rescore" / f"{version}.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    key = _signature(lo, hi, instances)
    recorded = state.get(key, {})
    # a list: the record of an older release, without the files; those days are scored again
    done: dict[str, list[str]] = recorded if isinstance(recorded, dict) else {}
    files = {d.isoformat(): _shard_files(settings, d) for d in days}
    result = RescoreResult(version=version, skipped_days=sorted(d for d, names in files.items()
                                                                if done.get(d) == names))
    todo = [d for d in days if d.isoformat() not in result.skipped_days]
    threshold = float(registry.info(version)["detector"]["threshold"])
    scorer = Scorer(settings.models_dir, version=version, intra_op_threads=intra_op_threads)
    bar = None
    if progress is True and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"rescore {version}", unit="day")
    with AnomalyLakehouse.from_settings(settings) as lake:
        for i, day in enumerate(todo, 1):
            table = read_shards(settings.shards_dir, days=[day])
            mask = None
            ts = table.column("arrival_timestamp")
            if lo is not None:
                mask = pc.greater_equal(ts, pa.scalar(lo, _TS))
            if hi is not None:
                upper = pc.less(ts, pa.scalar(hi, _TS))
                mask = upper if mask is None else pc.and_(mask, upper)
            if instances:
                inst = pc.is_in(table.column("instance_id"), value_set=pa.array(list(instances), pa.int64()))
                mask = inst if mask is None else pc.and_(mask, inst)
            if mask is not None:
                table = table.filter(mask)
            if table.num_rows:
                scored = pa.Table.from_batches([scorer.score(table)])  # keeps the kafka_* columns
                # the stream's path exactly: scored rows -> message bytes -> lakehouse rows
                messages, refused = [], []
                for message in anomaly_messages(scored, lambda _v: threshold):
                    try:
                        messages.append(encode_anomaly(message))
                    except AnomalyContractError as exc:  # like the stream: this row has no anomaly message
                        refused.append(str(exc))
                rows, errors = decode_anomalies(messages)
                refused += [reason for _, reason in errors]
                if refused:
                    logger.warning("rescoring day=%s version=%s: %d anomaly message(s) refused by the contract, "
                                   "first: %s", day, version, len(refused), refused[0][:200])
                result.refused += len(refused)
                result.anomalies += rows.num_rows
                result.inserted += _write_retrying(lake, rows) if rows.num_rows else 0
                result.rows += table.num_rows
            done[day.isoformat()] = files[day.isoformat()]  # listed before the read: later rows differ
            state[key] = done
            write_atomic(state_path, json.dumps(state, indent=1, sort_keys=True).encode())
            result.days.append(day.isoformat())
            logger.info("rescored day=%s version=%s rows=%d", day, version, table.num_rows)
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(i, len(todo), day.isoformat())
    if bar is not None:
        bar.close()
    if key in state:  # complete: the next call with these arguments starts over (and inserts nothing new)
        del state[key]
        write_atomic(state_path, json.dumps(state, indent=1, sort_keys=True).encode())
    return result
