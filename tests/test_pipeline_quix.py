"""The Quix internals the workbench relies on exist with the expected signatures (fails loudly on upgrade)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import quixstreams

from workbench.config import Settings
from workbench.pipeline._app import build_application
from workbench.pipeline._quix import (
    QuixInternalsError,
    assigned_partitions,
    commit_first_checkpoint_at_once,
    consume_in_batches,
    force_checkpoint,
    low_offsets,
    on_assignment,
    partition_flow,
    register_periodic,
)


def _app(tmp_path: Path) -> quixstreams.Application:
    settings = Settings(home=tmp_path / "home", kafka_port=1)  # never connected: building is offline
    return build_application(settings, "quix-test")


def test_the_pinned_quix_has_the_internals_with_their_signatures(tmp_path: Path) -> None:
    assert quixstreams.__version__.startswith("3.28."), quixstreams.__version__
    app = _app(tmp_path)
    register = app._dataframe_registry.register_periodic_task
    assert list(inspect.signature(register).parameters) == ["task"]
    commit = app._processing_context.commit_checkpoint
    assert list(inspect.signature(commit).parameters)[:1] == ["force"]
    assert "on_processing_error" in inspect.signature(quixstreams.Application).parameters


def test_the_adapter_registers_and_forces(tmp_path: Path) -> None:
    app = _app(tmp_path)
    calls: list[int] = []
    register_periodic(app, lambda: calls.append(1))
    app._dataframe_registry.run_periodic_tasks()
    assert calls == [1]
    assert callable(force_checkpoint(app))


def test_a_missing_or_changed_internal_raises_instead_of_switching_a_feature_off() -> None:
    with pytest.raises(QuixInternalsError, match="register_periodic_task"):
        register_periodic(SimpleNamespace(), lambda: None)  # type: ignore[arg-type]
    changed = SimpleNamespace(_processing_context=SimpleNamespace(commit_checkpoint=lambda now: None))
    with pytest.raises(QuixInternalsError, match="changed"):
        force_checkpoint(changed)  # type: ignore[arg-type]


def test_the_consumer_can_pause_and_resume_one_partition(tmp_path: Path) -> None:
    """The scoring app's per-partition backpressure needs ``Application._consumer.pause/resume``."""
    app = _app(tmp_path)
    consumer = app._consumer  # fails loudly here if Quix renames or removes it
    for method in ("pause", "resume"):
        assert list(inspect.signature(getattr(consumer, method)).parameters) == ["partitions"], method
    flow = partition_flow(app)
    flow.pause("events", 3)  # the real consumer takes a TopicPartition list (offline: not assigned, no error)
    flow.resume("events", 3)
    with pytest.raises(QuixInternalsError, match="_consumer"):
        partition_flow(SimpleNamespace())  # type: ignore[arg-type]


def test_the_batch_consume_step_replaces_the_per_message_step(tmp_path: Path) -> None:
    """The scoring app's batched loop step needs these internals (see ``consume_in_batches``)."""
    app = _app(tmp_path)
    assert callable(app._process_message)
    assert list(inspect.signature(app._consumer.consume).parameters) == ["num_messages", "timeout"]
    assert list(inspect.signature(app._processing_context.store_offset).parameters) == ["topic", "partition", "offset"]
    assert list(inspect.signature(app._run_tracker.set_message_consumed).parameters) == ["consumed"]
    for owner in (app._producer, app._consumer):
        assert callable(owner._broker_available)
    consume_in_batches(app, lambda messages: None, max_messages=10, on_skipped=lambda *args: None)
    assert app.__dict__["_process_message"].__name__ == "process"
    # messages deleted before they were read (on_skipped, low_offsets) need these two
    assert list(inspect.signature(app._consumer.committed).parameters)[:2] == ["partitions", "timeout"]
    assert list(inspect.signature(app._consumer.get_watermark_offsets).parameters)[:3] == [
        "partition", "timeout", "cached"]
    assert callable(low_offsets(app))
    with pytest.raises(QuixInternalsError, match="get_watermark_offsets"):
        low_offsets(SimpleNamespace(_consumer=SimpleNamespace()))  # type: ignore[arg-type]
    with pytest.raises(QuixInternalsError, match="_consumer"):
        consume_in_batches(SimpleNamespace(), lambda messages: None)  # type: ignore[arg-type]


def test_the_first_commit_and_assignment_adapters_find_their_internals(tmp_path: Path) -> None:
    """Start-up's early first commit and the trainer election's partition list need these internals."""
    app = _app(tmp_path)
    commit_first_checkpoint_at_once(app)  # raises QuixInternalsError if Quix changed them
    assert callable(assigned_partitions(app, "events"))
    for adapter in (commit_first_checkpoint_at_once, lambda a: assigned_partitions(a, "events")):
        with pytest.raises(QuixInternalsError):
            adapter(SimpleNamespace())


def test_the_assignment_callback_runs_after_quixs_own(tmp_path: Path) -> None:
    """The scoring app's idle clock starts at each assignment (``on_assignment``), where Quix restarts its own."""
    app = _app(tmp_path)
    assert len(inspect.signature(app._on_assign).parameters) == 2  # (consumer, partitions), as librdkafka calls it
    calls: list[object] = []
    app._on_assign = lambda *args: calls.append(("quix", args))  # type: ignore[method-assign]
    on_assignment(app, lambda: calls.append("callback"))
    app._on_assign(None, [])
    assert calls == [("quix", (None, [])), "callback"]
    with pytest.raises(QuixInternalsError, match="_on_assign"):
        on_assignment(SimpleNamespace(), lambda: None)  # type: ignore[arg-type]


def test_a_commit_the_group_refused_is_told_from_other_failures_and_exits_the_app_for_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A scoring app stopped for 7 s (an overloaded machine; SIGSTOP in a tester's run) lost its group membership,
    and Quix's next commit raised: it died with a traceback, and the status showed the restart without why."""
    from confluent_kafka import KafkaError, KafkaException
    from quixstreams.checkpointing import checkpoint as quix_checkpoint
    from quixstreams.checkpointing.exceptions import CheckpointConsumerCommitError

    from workbench.pipeline._app import lost_group_membership
    from workbench.runtime import _launch

    # Quix wraps librdkafka's error as the exception's first argument: the check reads it there
    assert "raise CheckpointConsumerCommitError(e.args[0])" in inspect.getsource(quix_checkpoint)
    refused = CheckpointConsumerCommitError(KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID)).args[0])
    assert lost_group_membership(refused)
    assert lost_group_membership(CheckpointConsumerCommitError(KafkaError(KafkaError.ILLEGAL_GENERATION)))
    try:
        try:
            raise refused
        except CheckpointConsumerCommitError as inner:
            raise RuntimeError("the sink's flush failed") from inner
    except RuntimeError as outer:
        assert lost_group_membership(outer)
    assert not lost_group_membership(CheckpointConsumerCommitError(KafkaError(KafkaError._MSG_TIMED_OUT)))
    assert not lost_group_membership(OSError("disk full"))

    def stalled(settings: Settings, **_: object) -> None:
        raise refused

    module = ModuleType("fake_runner")
    module.run = stalled  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_runner", module)
    monkeypatch.setitem(_launch.APP_RUNNERS, "stalled", "fake_runner:run")
    assert _launch._run_app(Settings(home=tmp_path / "home"), "stalled", {}) == _launch.EXIT_LOST_PARTITIONS
    line = capsys.readouterr().out
    assert line.startswith("workbench: error: stalled lost its partitions: Kafka's consumer group dropped it")
    assert "Unknown member" in line and "nothing is lost or counted twice" in line

    # a broker of a cluster stopped or restarted: its groups' commits fail while their coordinator moves
    # (tester A, 34th session: a traceback, or the process blamed for being stopped)
    for code in (KafkaError._WAIT_COORD, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR):
        moving = CheckpointConsumerCommitError(KafkaError(code))

        def away(settings: Settings, moving: Exception = moving, **_: object) -> None:
            raise moving

        module.run = away  # type: ignore[attr-defined]
        assert _launch._run_app(Settings(home=tmp_path / "home"), "stalled", {}) == _launch.EXIT_LOST_PARTITIONS
        line = capsys.readouterr().out
        assert "its consumer group's coordinator (a broker) was away or moving" in line, line
        assert "stopped or starved" not in line and "nothing is lost or counted twice" in line

    def broken(settings: Settings, **_: object) -> None:
        raise CheckpointConsumerCommitError(KafkaError(KafkaError._MSG_TIMED_OUT))

    module.run = broken  # type: ignore[attr-defined]
    with pytest.raises(CheckpointConsumerCommitError):  # any other failure stays a failure, with its traceback
        _launch._run_app(Settings(home=tmp_path / "home"), "stalled", {})


def test_skipped_offsets_are_found_before_and_inside_a_batch_but_not_a_commit_marker() -> None:
    """consume_in_batches' on_skipped: a jump of two offsets or more (one is a transaction's commit marker), at a
    batch's start against the offset expected and between two of its messages (a reset to the earliest offset
    after a deletion can come mid-batch)."""
    from workbench.pipeline._quix import _skips

    a, b = ("events", 0), ("events", 1)
    tps = [a, a, b, a, b, b]
    offsets = [10, 12, 5, 20, 6, 8]  # a: marker at 11 (fine), 13..19 skipped; b: marker at 7 (fine)

    def batch(expected: dict) -> list:
        first = dict(zip(reversed(tps), reversed(offsets), strict=True))
        last = dict(zip(tps, offsets, strict=True))
        return _skips(tps, offsets, first, last, expected, committed=None)

    assert batch({a: 10, b: 5}) == [(a, 13, 20)]
    # one offset before a's first (a marker): fine; three before b's
    assert sorted(batch({a: 9, b: 2})) == [(a, 13, 20), (b, 2, 5)]
    asked = []

    def committed(partitions: list, timeout: float) -> list:
        asked.append((partitions[0].topic, partitions[0].partition))
        return [SimpleNamespace(offset=-1001)]  # no committed offset: the group reads from 0

    expected: dict = {}
    first = {a: 10, b: 5}
    assert sorted(_skips(tps, offsets, first, {a: 20, b: 8}, expected, committed)) == [(a, 0, 10), (a, 13, 20),
                                                                                       (b, 0, 5)]
    assert sorted(asked) == [a, b] and expected == {a: 0, b: 0}
