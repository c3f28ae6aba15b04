"""The scoring app's idle exit waits until the maintenance has judged every day the stream settled.

A settled day is judged (runtime-residual windows, persistent runs) by the maintenance thread once the
watermark passes it and its rows are scored. The app must not stop idle before that, or the run's
lakehouse lacks the day's persistent runs (test_pipeline_on_postgres_matches_sqlite failed on CI so):
not during the warm-up after the first message (a partition never heard from holds nothing back, so a
day the watermark passes then may be partial: a run judged its first day from one partition's rows),
not while a partition that stored its last batch less than the warm-up ago still holds the watermark
below the newest event, and not before a residual pass that started after the last rescoring ended.
The loop's state is built by hand here; the clock is real.
"""

from __future__ import annotations

import datetime as dt
import time
import types
from pathlib import Path
from types import SimpleNamespace

from workbench.config import Settings
from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._days import UnscoredDays
from workbench.pipeline.scoring._loop import ScoringLoop
from workbench.pipeline.scoring._maintenance import ShardMaintenance, TrainerElection
from workbench.pipeline.scoring._rescore import Rescorer
from workbench.pipeline.scoring._sink import ScoringSink


def _idle_loop(tmp_path: Path) -> ScoringLoop:
    """A loop idle for 10 s (every message long consumed), with nothing running."""
    settings = Settings(home=tmp_path)
    status = AppStatus(settings, "scoring")
    loop = ScoringLoop.__new__(ScoringLoop)
    now = time.monotonic()
    loop.sink = SimpleNamespace(last_message_at=now - 10.0, buffered_rows=0, first_message_wall=time.time() - 30.0,
                                partition_max_us={}, partition_end_us={}, days_stored=set(),
                                busy_s=0.0, _busy_at_seen={}, _flush_started=None)  # no flush: silence is wall time
    for method in ("log_ended_us", "take_days_stored", "silent_s", "_busy_until"):
        setattr(loop.sink, method, types.MethodType(getattr(ScoringSink, method), loop.sink))
    loop._idle_exit, loop._assigned_at, loop._started = 4.0, now - 20.0, now - 30.0
    loop.rescorer = Rescorer(settings, UnscoredDays(tmp_path / "unscored.json"), status)
    loop.maintenance = ShardMaintenance(settings, status, window_days=1)
    loop.schedule, loop.pacer, loop.scorer, loop.election = None, None, None, None
    loop._watermark_held, loop._warmup_s, loop.training_grace_us = False, 4.0, 600_000_000
    return loop


def test_no_idle_exit_while_a_judged_day_written_to_since_waits_to_be_judged_again(tmp_path: Path) -> None:
    """Rows a seek forward skipped came (a reset) for a day judged without them: the app judges it again
    once they stop coming, and does not exit before."""
    loop = _idle_loop(tmp_path)
    residuals = loop.maintenance.residuals
    residuals.done_through = dt.date(2024, 3, 5)
    loop.sink.days_stored = {dt.date(2024, 3, 4), dt.date(2024, 3, 6)}
    loop.maintenance.note_stored(loop.sink.take_days_stored())
    assert set(residuals.grown) == {dt.date(2024, 3, 4)} and not loop.sink.days_stored  # 03-06: not judged yet
    assert not loop._idle() and not residuals.grown_due()  # written to just now: not quiet yet
    residuals.grown[dt.date(2024, 3, 4)] -= residuals.settle_s
    assert residuals.grown_due()
    residuals.last_try = time.monotonic()  # a pass just tried (the day still waits for its rescoring) ...
    assert not residuals.grown_due()  # ... so not again at the next tick: every retry_s (a tester: 5 a second)
    residuals.last_try -= residuals.retry_s
    assert residuals.grown_due()
    residuals.grown.clear()
    assert loop._idle()
    # another instance's days: not this one's to judge (its maintenance never runs, so they would stay)
    noted: list[set[dt.date]] = []
    loop.election = SimpleNamespace(leader=False, record=lambda sink: None, note_written=noted.append)
    loop.sink.days_stored = {dt.date(2024, 3, 4)}
    loop._after_flush()
    assert not residuals.grown and not loop.sink.days_stored and loop._idle()
    assert noted == [{dt.date(2024, 3, 4)}]  # into its heartbeats, for the trainer (the next test)


def test_the_trainer_judges_again_a_day_another_instance_wrote_after_its_judging(tmp_path: Path) -> None:
    """With two scoring instances, rows the other one stored for a judged day (a reset sent what a seek had
    skipped) never made the trainer judge that day again: only its own sink's writes counted. Now every
    instance names the days it wrote in its heartbeat, and the trainer's clock reads them."""
    from workbench.store.shards import cluster_clock, write_heartbeat

    settings = Settings(home=tmp_path)
    shards = settings.shards_dir
    residuals = ShardMaintenance(settings, AppStatus(settings, "scoring"), window_days=1).residuals
    d1, d2, d3 = dt.date(2024, 3, 4), dt.date(2024, 3, 5), dt.date(2024, 3, 6)
    other_status = AppStatus(settings, "scoring")
    other_status.instance = 1  # a second process's slot
    other = TrainerElection(settings, other_status, assignment=lambda: [1])
    other.note_written({d1, d2})  # the other instance's sink stored rows of both days
    other.tick(None, SimpleNamespace(reload=lambda: None), 1.0, force=True)  # its heartbeat
    wrote = max(other.written.values())
    assert cluster_clock(shards).written == {d1: wrote, d2: wrote}
    residuals.note_written(cluster_clock(shards).written)
    assert not residuals.grown  # before the first pass: where the store is is not known yet
    residuals.done_through = d2
    residuals.judged_at.update({d1: wrote + 1.0, d2: wrote + 1.0})  # judged after those writes: they were read
    residuals.note_written(cluster_clock(shards).written)
    assert not residuals.grown
    later = wrote + 5.0
    write_heartbeat(shards, 1, assigned=[1], idle=[], written={d1: later, d3: later})  # d3: not judged yet
    residuals.note_written(cluster_clock(shards).written)
    assert set(residuals.grown) == {d1}
    residuals.grown.clear()
    residuals.note_written(cluster_clock(shards).written)  # the same report again: noted once
    assert not residuals.grown
    write_heartbeat(shards, 0, assigned=[0], idle=[0], written={d2: later + 1.0})  # the trainer's own, too
    residuals.note_written(cluster_clock(shards).written)
    assert set(residuals.grown) == {d2}
    restarted = ShardMaintenance(settings, AppStatus(settings, "scoring"), window_days=1).residuals
    restarted.done_through = d2  # read from the store: when d1 and d2 were judged is not known
    restarted.note_written(cluster_clock(shards).written)
    assert set(restarted.grown) == {d1, d2}


def test_no_idle_exit_before_a_residual_pass_after_the_rescoring(tmp_path: Path) -> None:
    loop = _idle_loop(tmp_path)
    now = time.monotonic()
    residuals = loop.maintenance.residuals
    residuals.pending = dt.date(2024, 3, 4)
    # The pass started while the rescoring thread was still finishing: it saw the day still waiting.
    residuals.last_try = now - 1.5
    loop.rescorer.finished_at = now - 1.0
    assert not loop._idle()
    # A pass after the rescoring ended: whatever still keeps the day pending, it is not the rescoring.
    residuals.last_try = now - 0.5
    assert loop._idle()
    residuals.pending = None
    assert loop._idle()


def test_no_idle_exit_while_a_partition_still_holds_the_watermark(tmp_path: Path) -> None:
    loop = _idle_loop(tmp_path)
    now = time.monotonic()
    day_us = 86_400_000_000
    start = int(dt.datetime(2024, 3, 5, tzinfo=dt.UTC).timestamp() * 1e6)
    sink = loop.sink
    # Partition 0 received its last message 10 s ago but stored that batch only 3.9 s ago (a slow last
    # flush); partition 1 went quiet long ago, with the day's newest event.
    sink.partition_max_us = {0: start + 600_000_000, 1: start + day_us - 60_000_000}
    sink.partition_seen = {0: now - 3.9, 1: now - 30.0}
    sink.held_partitions, sink.first_event_us = set(), start - day_us
    sink.max_event_us = max(sink.partition_max_us.values())
    sink.watermark_us = types.MethodType(ScoringSink.watermark_us, sink)
    loop._after_flush()
    loop.maintenance.join()
    assert loop._watermark_held and not loop._idle()  # idle for 10 s, but the last event has not been seen
    sink.partition_seen[0] = now - 4.1
    loop._after_flush()
    loop.maintenance.join()
    assert not loop._watermark_held and loop._idle()


def test_no_day_is_judged_and_no_idle_exit_during_the_warm_up(tmp_path: Path) -> None:
    loop = _idle_loop(tmp_path)
    now = time.monotonic()
    start = int(dt.datetime(2024, 3, 5, tzinfo=dt.UTC).timestamp() * 1e6)
    sink = loop.sink
    # One partition delivered both days at once; the others have not been heard from yet.
    sink.partition_max_us, sink.partition_seen = {0: start + 80_000_000_000}, {0: now - 10.0}
    sink.held_partitions, sink.first_event_us = set(), start - 86_400_000_000
    sink.max_event_us = start + 80_000_000_000
    sink.watermark_us = types.MethodType(ScoringSink.watermark_us, sink)
    sink.first_message_wall = time.time() - 1.0
    loop._after_flush()
    assert loop.maintenance.done_for is None and not loop._idle()  # 2024-03-04 not judged from one partition
    sink.first_message_wall = time.time() - 5.0
    loop._after_flush()
    loop.maintenance.join()
    assert loop.maintenance.done_for == (dt.date(2024, 3, 5), None) and loop._idle()


def test_a_trained_version_missing_from_the_registry_is_taken_for_gone_only_after_a_while(
        tmp_path: Path, monkeypatch) -> None:
    """The training state can say a day is done a moment before a shared registry lists its version: the rule
    must wait for it then (scoring the next day with the version before it would not be final), and skip it
    only when it stays missing (deleted or damaged: a tester's `rm -rf` stalled the stream for good)."""
    from workbench.ml.scorer import Scorer
    from workbench.ml.selection import Cadence
    from workbench.pipeline.scoring import _loop

    loop = _idle_loop(tmp_path)
    d1, d2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)
    trained = Cadence(d1, 1, done_days=frozenset({d1, d2}))
    loop.schedule = SimpleNamespace(cadence=lambda: trained)
    loop.scorer = Scorer(tmp_path / "models", by_event_time=True)  # an empty registry: neither version listed
    now = [100.0]
    monkeypatch.setattr(_loop.time, "monotonic", lambda: now[0])
    assert loop._cadence().done_days == frozenset()  # just missing: still coming
    now[0] += _loop.GONE_AFTER_S - 1
    assert loop._cadence().done_days == frozenset()
    now[0] += 1
    assert loop._cadence() == trained  # missing for GONE_AFTER_S: gone, the rule skips them
    loop.schedule = SimpleNamespace(cadence=lambda: None)
    assert loop._cadence() is None and not loop.__dict__["_missing_since"]


def test_rows_of_a_day_without_any_readable_version_stay_to_be_rescored(tmp_path: Path) -> None:
    """The only version of a day was damaged after it was listed: the rescoring pass scored nothing and still
    took the day out of the unscored set, so its rows stayed unscored for good (and the day's judging with
    them). Now the day stays, and is tried again after UNSCORABLE_RETRY_S, not at every tick."""
    from tests.helpers import store_generated_days
    from workbench.ml._train import train_table
    from workbench.ml.scorer import Scorer
    from workbench.ml.selection import Cadence
    from workbench.store.shards import read_shards, read_window

    d1, d2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)
    settings = store_generated_days(Settings(home=tmp_path / "home"), days=2, start=d1)
    version = train_table(settings.models_dir, read_window(settings.shards_dir, d1, d1), d1, window_days=1).version
    onnx = settings.models_dir / "versions" / version / "mean.onnx"
    onnx.write_bytes(onnx.read_bytes()[:64])  # damaged after it was registered
    unscored = UnscoredDays(tmp_path / "unscored.json")
    unscored.add({d2.isoformat()})
    rescorer = Rescorer(settings, unscored, AppStatus(settings, "scoring"))
    cadence = Cadence(d1, 1, done_days=frozenset({d1}))
    main = Scorer(settings.models_dir, by_event_time=True, cadence=lambda: cadence)
    rescorer.maybe_start(main, cadence)
    rescorer.join()
    assert unscored.snapshot() == {d2.isoformat()}  # kept: its rows are still unscored
    assert read_shards(settings.shards_dir, [d2], ["model_version"]).column("model_version").null_count > 0
    assert rescorer.not_before > time.monotonic()
    rescorer.maybe_start(main, cadence)
    assert not rescorer.running  # not again at the next tick
