"""Chaos harness shared by ``tests/test_chaos.py`` (short) and ``benchmarks/chaos.py`` (long).

A labelled log (``workbench.data.generator``) is replayed through a whole workbench on a private,
managed Kafka while a seeded random schedule ``kill -9``s the replay, each app, the supervisor, the
training subprocess and the broker. Recovery is the product's own: the supervisor restarts apps
and the replay, and restarts the managed broker; after a supervisor kill its children die with it
and the harness starts the workbench again with ``reset=False`` (what an operator does).

Afterwards every store is compared with an offline computation from the source file:

* the events topic (read_committed) and the shards hold each source query exactly once;
* ``window_stats`` plus ``late_events`` equal a DuckDB aggregation of the source into 10-minute
  windows per instance, window by window;
* the lakehouse holds each anomaly the shards flagged exactly once, and the runs of persistently slower
  statements that the settled days call for (:func:`expected_window_anomalies`), and nothing else;
* the lakehouse's ``window_anomalies`` hold each collective anomaly that the final stores call for
  exactly once, and nothing else (:func:`expected_window_anomalies`), and ``window_residuals`` each
  settled day's runtime-residual window with the values the final shards give.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition

from tests.helpers import free_port_pair
from workbench._fs import same_process
from workbench._lifeline import home_processes
from workbench.broker import LocalKafka
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline import read_dead_letters
from workbench.replay import ReplayError
from workbench.runtime import Workbench
from workbench.runtime.supervisor import read_state

__all__ = ["KINDS", "ChaosResult", "Kill", "differences", "outcome", "run_chaos"]

#: Every process kind the schedule can kill.
KINDS: tuple[str, ...] = ("replay", "scoring", "analytics", "anomaly-sink", "supervisor", "training", "broker")
WINDOW_MS = 600_000
#: The training supervisor's default ``max_attempts``: the watcher leaves a day's last attempt alone.
TRAINING_MAX_ATTEMPTS = 3
#: The analytics app's collective step judges a window once its instance has one this much later
#: (``CollectiveStep(settings)``'s default ``settle_ms``).
COLLECTIVE_SETTLE_MS = 900_000


@dataclass
class Kill:
    at: float  # seconds after the start
    kind: str
    pid: int | None = None  # None: nothing of that kind ran at that moment


@dataclass
class ChaosResult:
    seed: int
    kills: list[Kill]
    drain_seconds: float
    source_rows: int
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # rows no offline computation calls for
    late_events: int = 0
    anomalies: int = 0
    window_anomalies: int = 0
    diagnostics: str = ""  # a failed run's training state and log lines (see :func:`_diagnostics`)

    @property
    def done_kills(self) -> list[Kill]:
        return [k for k in self.kills if k.pid is not None]

    @property
    def ok(self) -> bool:
        return not any(self.lost.values()) and not any(self.duplicated.values()) and not any(self.extra.values())

    def summary(self) -> str:
        kinds = Counter(k.kind for k in self.done_kills)
        return (f"chaos: {len(self.done_kills)} kills, {sum(self.lost.values())} lost, "
                f"{sum(self.duplicated.values())} duplicated, {sum(self.extra.values())} extra (seed {self.seed}; "
                f"kills by kind {dict(kinds)}; lost {self.lost}; duplicated {self.duplicated}; extra {self.extra}; "
                f"{self.source_rows:,} events, {self.late_events} late, {self.anomalies} anomalies, "
                f"{self.window_anomalies} window anomalies; drained in {self.drain_seconds:.1f} s)")




# --- killing ----------------------------------------------------------------------------------------
def _pid_of(settings: Settings, kind: str) -> int | None:
    if kind == "broker":
        return LocalKafka(settings).pid()
    if kind == "training":
        run = _running_training(settings)
        return run[0] if run else None
    state = read_state(settings.home) or {}
    if kind == "supervisor":
        return state.get("supervisor_pid") if state.get("state") == "running" else None
    proc = state.get("processes", {}).get(kind, {})
    return proc.get("pid") if proc.get("state") == "running" else None


def _wait_for_pid(settings: Settings, kind: str, timeout: float) -> int | None:
    """The pid of ``kind`` once it runs (polled), or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (pid := _pid_of(settings, kind)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return pid


def _running_training(settings: Settings) -> tuple[int, int] | None:
    """``(pid, attempt)`` of the running training: the scoring app's training state names it (cheap to read)."""
    for path in settings.state_dir.rglob("ml_training.json"):
        with contextlib.suppress(OSError, ValueError):
            for entry in json.loads(path.read_text()).get("days", {}).values():
                if entry.get("status") == "running" and same_process(entry.get("pid"), entry.get("pid_started")):
                    return int(entry["pid"]), int(entry.get("attempts", 1))
    return None


def _finished_and_drained(wb: Workbench) -> bool:
    try:
        status = wb.status()
    except ReplayError:  # the broker is down (a kill just before): the supervisor brings it back
        return False
    return (status.drained and status.replay_state == "finished" and status.rows_total > 0
            and status.rows_sent == status.rows_total)


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"chaos: {what} not reached within {timeout:.0f} s")


# --- the run ------------------------------------------------------------------------------------------
def run_chaos(data: Path, home: Path, *, seed: int, kills: int, speedup: float, pack: int,
              encoding: str | None = None, partitions: int = 4, kinds: tuple[str, ...] = KINDS,
              first_kill_s: float = 8.0, min_gap_s: float = 3.0,
              max_gap_s: float = 8.0, drain_timeout: float = 900.0, settle_timeout: float = 300.0,
              max_speed_after: bool = True, training_delay_s: tuple[float, float] = (0.5, 3.0),
              log=print) -> ChaosResult:
    """Replay ``data`` through a fresh workbench under ``home`` with ``kills`` seeded kill -9s.

    ``max_speed_after`` switches the replay to max speed once the schedule is done (short tests);
    without it the replay keeps its pace, so a run with kills and one without compare.
    ``training_delay_s``: the range of seconds a training runs before the watcher kills it (a
    training of a small log takes a second or two: a short range makes the kills land).
    """
    rng = random.Random(seed)
    settings = Settings(home=home, kafka_port=free_port_pair(), kafka_heap="512m", partitions=partitions)
    # Each kind once in a shuffled round, then rounds again: every kind is reached early.
    order: list[str] = []
    while len(order) < kills:
        round_ = list(kinds)
        rng.shuffle(round_)
        order.extend(round_)
    order = order[:kills]
    # The training subprocess runs only now and then (after each finished day): a watcher kills it
    # a seeded few seconds into a run, as often as the schedule says; the rest go in sequence.
    training_quota = order.count("training")
    order = [k for k in order if k != "training"]
    gaps = ([first_kill_s] + [rng.uniform(min_gap_s, max_gap_s) for _ in order[1:]])[:len(order)]
    training_delays = [rng.uniform(*training_delay_s) for _ in range(training_quota)]
    done: list[Kill] = []
    started, started_wall = time.monotonic(), time.time()
    stop_watch = threading.Event()

    def watch_training() -> None:
        seen: set[int] = set()
        while training_delays and not stop_watch.is_set():
            run = _running_training(settings)
            pid = run[0] if run else None
            # Not a day's last attempt: killing that one fails the day for good (no model), which no
            # run without kills does, and the comparison with one would show it, not a fault.
            if run is not None and pid not in seen and run[1] < TRAINING_MAX_ATTEMPTS:
                seen.add(pid)
                if stop_watch.wait(training_delays.pop(0)):
                    return
                if _kill(pid):
                    log(f"  {time.monotonic() - started:6.1f}s  kill -9 training (pid {pid})")
                    done.append(Kill(time.monotonic() - started, "training", pid))
            stop_watch.wait(0.1)

    def start(reset: bool) -> Workbench:
        return Workbench.start(data=data, speedup=speedup, pack=pack, encoding=encoding, settings=settings,
                               reset=reset)

    wb = start(True)
    watcher = threading.Thread(target=watch_training, daemon=True)
    watcher.start()
    try:
        for kind, gap in zip(order, gaps, strict=True):
            time.sleep(gap)
            # A process restarting after an earlier kill (or the broker's) is waited for, not skipped:
            # a skipped kind fails the run's "every kind killed" check for a reason that is no fault.
            pid = _wait_for_pid(settings, kind, timeout=30.0)
            if pid is None or not _kill(pid):
                log(f"  {time.monotonic() - started:6.1f}s  {kind:<12} not running: skipped")
                done.append(Kill(time.monotonic() - started, kind))
                continue
            log(f"  {time.monotonic() - started:6.1f}s  kill -9 {kind} (pid {pid})")
            done.append(Kill(time.monotonic() - started, kind, pid))
            if kind == "supervisor":
                # Its children die with it (parent-death signal / watchdog); then start again.
                _until(lambda: not home_processes(settings.home), 60, "the supervisor's children exit")
                wb = start(False)
        if max_speed_after:
            wb.set_speed("max")
        # The training watcher keeps going until the end: trainings start after each finished day.
        # Finished, not merely inactive: right after a restart the state topic still shows the status
        # the killed run left ("stopped"), before the new run publishes its own.
        _until(lambda: _finished_and_drained(wb), drain_timeout, "drained", poll=1.0)
        stop_watch.set()
        drained_at = time.monotonic() - started
        # The scoring app judges a day's residual windows once the day is settled and wholly scored
        # (after the last rescoring): a drained run can still be short of the last settled day.
        with contextlib.suppress(AssertionError):  # not reached: compare() reports the windows lost
            _until(lambda: _residuals_done(settings, data), settle_timeout, "residual windows stored", poll=1.0)
        time.sleep(3.0)  # one more checkpoint of every app
    finally:
        stop_watch.set()
        wb.stop(kafka=False)
    if training_delays:
        done.extend(Kill(0.0, "training") for _ in training_delays)  # never reached: recorded as skipped
    done.sort(key=lambda k: k.at)
    result = ChaosResult(seed=seed, kills=done, drain_seconds=drained_at, source_rows=0)
    try:
        compare(settings, data, result)
    finally:
        LocalKafka(settings).stop()
    if not result.ok:
        result.diagnostics = _diagnostics(settings, started_wall)
    return result


def _diagnostics(settings: Settings, started_wall: float) -> str:
    """What a failed run leaves to go on, in a CI log: the training state, the apps' warnings and
    training lines, and the training logs' tails (the home is gone after the run)."""
    lines = [f"run started {dt.datetime.fromtimestamp(started_wall, dt.UTC):%H:%M:%S} UTC (kill times are after it)"]
    for path in sorted(settings.state_dir.rglob("ml_training.json")):
        lines.append(f"--- {path.relative_to(settings.home)}: {path.read_text(errors='replace')}")
    for path in sorted(settings.logs_dir.glob("*.log")):
        if path.name.startswith("kafka"):
            continue
        text = path.read_text(errors="replace").splitlines()
        if path.name.startswith("train"):
            picked = text[-15:]
        else:
            picked = [t for t in text if ("WARNING" in t or "ERROR" in t or "training" in t or "===" in t)
                      and "[quixstreams]" not in t][-40:]  # not the clients' broker-down chatter
        lines.append(f"--- {path.name}\n" + "\n".join(picked))
    return "\n".join(lines)


# --- the comparison ---------------------------------------------------------------------------------
def _ms(values: pa.ChunkedArray) -> list[int]:
    """Timestamps (any unit or zone) as epoch milliseconds."""
    return pc.cast(pc.cast(values, pa.timestamp("ms", tz="UTC")), pa.int64()).to_pylist()


def residual_days(settings: Settings, data: Path) -> list[dt.date]:
    """The event days whose residual windows a finished, drained run must have judged.

    The scoring app's maintenance judges the shard days before the day of ``watermark - grace``, and
    every day once each partition delivered the replay's end-of-log marker: a finished run, all of them.
    """
    from workbench.store.shards import list_days

    newest = duckdb.sql(f"SELECT max(epoch_ms(arrival_timestamp)) FROM read_parquet('{data}')").fetchone()[0]
    last = dt.datetime.fromtimestamp(newest / 1000, dt.UTC).date()
    return [d for d in list_days(settings.shards_dir) if d <= last]


def _residuals_done(settings: Settings, data: Path) -> bool:
    from workbench.analysis.read import judged_through

    days = residual_days(settings, data)
    return not days or judged_through(settings, days[-1])


def expected_window_anomalies(settings: Settings, data: Path) -> tuple[pa.Table, pd.DataFrame, int, Counter]:
    """The ``window_anomalies`` rows a finished, drained run must hold, from its final stores.

    * The analytics app's collective step: :func:`~workbench.analysis.collective.flag_windows` over
      the final ``window_stats`` windows that are settled (their partition's end-of-log marker came after
      them, or their instance has a window at least
      :data:`COLLECTIVE_SETTLE_MS` later, and the analytics app holds neither it nor an earlier window of
      its instance open), each
      against the instance's earlier windows, the silent ones of
      :func:`~workbench.analysis.collective.with_silent_windows` included, as
      :class:`~workbench.analysis.collective.CollectiveStep` does.
    * The scoring app's runtime residual: each settled day (:func:`residual_days`) in order, its
      windows from the final shards (:func:`~workbench.analysis.residual_windows.residual_windows`
      with the scoring version's evidence source) judged against the earlier days' windows and its
      own, as :class:`~workbench.pipeline.scoring._residuals.ResidualWindowsStep` does.

    Also returns the settled days' residual windows (what ``window_residuals`` must hold), the
    executed rows of settled days still unscored (such a day, and every later one, is never judged:
    the product waits for its rescoring) and the ``anomalies`` keys ``(instance, query, version)`` the
    same step adds for those days' runs of persistently slower statements and queries of slower groups
    (:func:`~workbench.analysis.deferred.deferred_runs`, with the step's own constants and spreads).
    """
    from types import SimpleNamespace

    from workbench.analysis.collective import CollectiveParams, flag_windows, with_silent_windows
    from workbench.analysis.deferred import DEFERRED_COLUMNS, deferred_runs
    from workbench.analysis.residual_windows import judge_residual_windows, residual_windows
    from workbench.ml.features import REFERENCE_SOURCE_COLUMNS
    from workbench.pipeline.scoring._residuals import _WINDOW_COLUMNS, ResidualWindowsStep
    from workbench.store.shards import read_shards
    from workbench.store.window_stats import WindowStatsStore

    params = CollectiveParams()
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        still_open = store.earliest_open_windows()
        ended = store.log_ends()
        frame = store.read().to_pandas()
    parts: list[pa.Table] = []
    if len(frame):
        frame = with_silent_windows(frame)  # as the step judges them: the windows without a query too
        start_ms = pd.DatetimeIndex(frame["window_start"]).as_unit("ms").asi8
        newest = pd.Series(start_ms).groupby(frame["instance_id"].to_numpy()).transform("max").to_numpy()
        settled = start_ms <= newest - COLLECTIVE_SETTLE_MS
        instances = frame["instance_id"].tolist()
        low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        end_ms = np.array([ended.get(i, low) for i in instances], dtype=np.int64)
        settled |= start_ms <= end_ms  # or the log ended after it (end-of-log marker)
        first_open = np.array([still_open.get(i, high) for i in instances], dtype=np.int64)
        settled &= start_ms < first_open  # nor held open by the analytics app
        parts.append(flag_windows(frame[settled], frame, params))
    step = ResidualWindowsStep(settings, SimpleNamespace(counters={}), params=params)
    columns = list(dict.fromkeys(_WINDOW_COLUMNS + REFERENCE_SOURCE_COLUMNS + DEFERRED_COLUMNS))
    earlier: list[pd.DataFrame] = []
    persistent: Counter = Counter()
    unscored = 0
    for day in residual_days(settings, data):
        rows = read_shards(settings.shards_dir, [day], columns=columns)
        unscored = int(residual_windows(rows)["unscored_queries"].sum())
        if unscored:
            break
        known, usual_wait, homes, unseen = step._expectations(rows)
        windows = residual_windows(rows, known=known).drop(columns="unscored_queries")
        for flagged in deferred_runs(rows, known, usual_wait, persistence=step.persistence, groups=step.groups,
                                     scales=step._scales, usual_hours=step.usual_hours(), homes=homes,
                                     unseen=unseen):
            persistent.update(zip(flagged["instance_id"].tolist(), flagged["query_id"].tolist(),
                                  flagged["model_version"].tolist(), strict=True))
        # Every earlier day: the judge keeps each window's own lookback, so this is the whole-store answer.
        history = pd.concat(earlier, ignore_index=True) if earlier else windows.iloc[:0]
        parts.append(judge_residual_windows(windows, pd.concat([history, windows], ignore_index=True), params))
        earlier.append(windows)
    keep = ["instance_id", "window_start", "signal"]
    flagged = pa.concat_tables([t.select(keep) for t in parts]) if parts else pa.table(
        {"instance_id": pa.array([], pa.int64()), "window_start": pa.array([], pa.timestamp("ms", tz="UTC")),
         "signal": pa.array([], pa.string())})
    residuals = pd.concat(earlier, ignore_index=True) if earlier else pd.DataFrame(
        columns=["instance_id", "window_start", "residual_queries", "median_log_residual", "beyond_tolerance_queries"])
    return flagged, residuals, unscored, persistent


def _residual_keys(frame: pd.DataFrame) -> Counter:
    """``(instance, window ms, judged queries, median, queries past the tolerance)`` per residual window (a value
    differing: lost + extra)."""
    starts = pd.DatetimeIndex(pd.to_datetime(frame["window_start"], utc=True)).as_unit("ms").asi8
    medians = [None if m is None or np.isnan(m) else round(float(m), 12) for m in frame["median_log_residual"]]
    return Counter(zip(frame["instance_id"].astype("int64").tolist(), starts.tolist(),
                       frame["residual_queries"].astype("int64").tolist(), medians,
                       frame["beyond_tolerance_queries"].astype("int64").tolist(), strict=True))


def _window_keys(table: pa.Table) -> Counter:
    return Counter(zip(table.column("instance_id").to_pylist(), _ms(table.column("window_start")),
                       table.column("signal").to_pylist(), strict=True))


def _source(data: Path) -> pa.Table:
    return pq.read_table(data, columns=["instance_id", "query_id", "arrival_timestamp"])


def _diff(expected: Counter, got: Counter) -> tuple[int, int]:
    lost = sum((expected - got).values())
    duplicated = sum((got - expected).values())
    return lost, duplicated


def _topic_keys(settings: Settings) -> Counter:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
                        "enable.auto.commit": False, "isolation.level": "read_committed",
                        "auto.offset.reset": "earliest", "enable.partition.eof": True, "log_level": 3})
    topic = settings.topic_query_events
    try:
        partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        open_partitions = set(partitions)
        keys: Counter = Counter()
        deadline = time.monotonic() + 300
        while open_partitions and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=1.0):
                if message.error():
                    if message.error().code() == -191:  # _PARTITION_EOF
                        open_partitions.discard(message.partition())
                    continue
                encoding = codec.header(message.headers() or [], "encoding")
                batch = codec.decode_values([message.value()], [encoding]).batch
                keys.update(zip(batch.column("instance_id").to_pylist(), batch.column("query_id").to_pylist(),
                                strict=True))
        return keys
    finally:
        consumer.close()


def compare(settings: Settings, data: Path, result: ChaosResult) -> None:
    """Fill ``result.lost`` / ``result.duplicated`` per store from an offline computation of ``data``."""
    from workbench.store.lakehouse import AnomalyLakehouse
    from workbench.store.shards import read_shards
    from workbench.store.window_stats import WindowStatsStore

    source = _source(data)
    result.source_rows = source.num_rows
    expected = Counter(zip(source.column("instance_id").to_pylist(), source.column("query_id").to_pylist(),
                           strict=True))

    lost, dup = _diff(expected, _topic_keys(settings))
    result.lost["events topic"], result.duplicated["events topic"] = lost, dup
    # a valid log under kills calls for no dead letter (a kill's aborted transaction is not a deletion)
    result.extra["dead letters"] = read_dead_letters(settings).num_rows

    shards = read_shards(settings.shards_dir, columns=["instance_id", "query_id", "model_version", "is_anomaly"])
    lost, dup = _diff(expected, Counter(zip(shards.column("instance_id").to_pylist(),
                                            shards.column("query_id").to_pylist(), strict=True)))
    result.lost["shards"], result.duplicated["shards"] = lost, dup

    # window_stats + late events == the offline 10-minute aggregation, window by window.
    offline = duckdb.sql(
        f"SELECT instance_id, (epoch_ms(arrival_timestamp) // {WINDOW_MS}) * {WINDOW_MS} AS w, count(*) AS n "
        f"FROM read_parquet('{data}') GROUP BY ALL").fetchall()
    want = Counter({(i, w): n for i, w, n in offline})
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        windows = store.read()
        late = store.late_events()
    got: Counter = Counter()
    starts = windows.column("window_start").cast(pa.int64()).to_pylist()
    for inst, start, n in zip(windows.column("instance_id").to_pylist(), starts,
                              windows.column("total_queries").to_pylist(), strict=True):
        got[(inst, start)] += n
    late_starts = late.column("window_start").cast(pa.int64()).to_pylist()
    for inst, start, n in zip(late.column("instance_id").to_pylist(), late_starts,
                              late.column("late_count").to_pylist(), strict=True):
        got[(inst, start)] += n
        result.late_events += n
    lost, dup = _diff(want, got)
    result.lost["window_stats+late"], result.duplicated["window_stats+late"] = lost, dup

    # The lakehouse holds every anomaly the shards flagged, once, under the model that flagged it, and
    # the runs of persistently slower statements the settled days call for (never a flagged one).
    want_windows, want_residuals, unscored, persistent = expected_window_anomalies(settings, data)
    flagged = Counter(
        (i, q, v) for i, q, v, a in zip(shards.column("instance_id").to_pylist(), shards.column("query_id").to_pylist(),
                                        shards.column("model_version").to_pylist(),
                                        shards.column("is_anomaly").to_pylist(), strict=True) if a)
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        rows = lake.connection.execute(
            "SELECT instance_id, query_id, model_version FROM lake.anomalies").fetchall()
    result.anomalies = len(rows)
    lost, dup = _diff(flagged + persistent, Counter(rows))
    result.lost["lakehouse"], result.duplicated["lakehouse"] = lost, dup

    # window_anomalies: each (instance, window, signal) the final stores call for, once, nothing else.
    want = _window_keys(want_windows)
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        got = _window_keys(lake.read_window_anomalies())
    result.window_anomalies = sum(got.values())
    result.lost["window_anomalies"] = len(want.keys() - got.keys())
    result.duplicated["window_anomalies"] = sum(n - 1 for n in got.values() if n > 1)
    result.extra["window_anomalies"] = len(got.keys() - want.keys())
    result.lost["scores of settled days"] = unscored  # their residual windows can never be judged
    # window_residuals: the settled days' residual windows, each once, with the offline values.
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        stored = store.read_residuals().to_pandas()
    want, got = _residual_keys(want_residuals), _residual_keys(stored)
    result.lost["window_residuals"] = sum((want - got).values())
    result.extra["window_residuals"] = sum((got - want).values())


# --- against another run ----------------------------------------------------------------------------
def outcome(home: Path) -> dict[str, Counter]:
    """What a run's stores hold that must not depend on kills or speed, per store (for :func:`differences`).

    Shards: ``(instance, query, model_version, round(score, 6), is_anomaly)``; lakehouse anomalies:
    ``(instance, query, model_version, round(score, 6))``; window anomalies ``(instance, window, signal)``;
    residual windows with their values; ``window_stats`` rows (all but ``updated_at``) and late-event
    counts; model versions ``(id, training day, inputs_sha256)``.
    """
    from workbench.ml.registry import ModelRegistry
    from workbench.store.lakehouse import AnomalyLakehouse
    from workbench.store.shards import read_shards
    from workbench.store.window_stats import WindowStatsStore

    settings = Settings(home=home)
    shards = read_shards(settings.shards_dir,
                         columns=["instance_id", "query_id", "model_version", "score", "is_anomaly"])
    rows = Counter(zip(shards.column("instance_id").to_pylist(), shards.column("query_id").to_pylist(),
                       shards.column("model_version").to_pylist(),
                       pc.round(shards.column("score"), 6).to_pylist(), shards.column("is_anomaly").to_pylist(),
                       strict=True))
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        lake_rows = lake.connection.execute(
            "SELECT instance_id, query_id, model_version, score FROM lake.anomalies").fetchall()
        windows = _window_keys(lake.read_window_anomalies())
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        residuals = _residual_keys(store.read_residuals().to_pandas())
        stats = Counter(tuple(sorted(w.items())) for w in store.read().drop_columns(["updated_at"]).to_pylist())
        late = Counter(tuple(sorted(r.items())) for r in store.late_events().to_pylist())
    registry = ModelRegistry(settings.models_dir)
    versions = Counter((v, registry.info(v)["training_day"], registry.info(v)["inputs_sha256"])
                       for v in registry.versions())
    return {"shards": rows, "lakehouse": Counter((i, q, v, round(s, 6)) for i, q, v, s in lake_rows),
            "window_anomalies": windows, "window_residuals": residuals, "window_stats": stats, "late events": late,
            "model versions": versions}


def differences(a: dict[str, Counter], b: dict[str, Counter]) -> dict[str, tuple[int, int]]:
    """Per store, ``(rows only in a, rows only in b)`` of two :func:`outcome` s."""
    return {name: (sum((a[name] - b[name]).values()), sum((b[name] - a[name]).values())) for name in a}
