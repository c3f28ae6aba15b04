"""The one place that touches Quix Streams internals (pinned ``quixstreams==3.28.*``).

Three things the workbench needs have no public API in Quix 3.28:

* a callback on every iteration of the app's main loop, also while no message arrives (status
  files, training supervision, idle detection): ``app._dataframe_registry.register_periodic_task``,
  the hook ``join_lookup`` uses;
* forcing a checkpoint now (the scoring app flushes as soon as a partition's batch is full rather
  than waiting for ``commit_interval``): ``app._processing_context.commit_checkpoint(force=True)``;
* the partitions the consumer holds now (N scoring instances report them for the shared training
  watermark): ``app._consumer.assignment()``;
* pausing and resuming *one* partition (the scoring app's per-partition backpressure; Quix's own
  sink backpressure pauses and rewinds every partition): ``app._consumer.pause(partitions)`` /
  ``app._consumer.resume(partitions)``.

All are resolved here, at build time, and a missing or changed internal raises
:class:`QuixInternalsError` instead of silently switching a feature off. ``tests/test_pipeline_quix.py``
asserts the attributes and their signatures on the installed version, so an upgrade fails loudly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from quixstreams import Application

from workbench.pipeline.exceptions import PipelineError

__all__ = ["PartitionFlow", "QuixInternalsError", "assigned_partitions", "force_checkpoint", "partition_flow",
           "register_periodic"]


class QuixInternalsError(PipelineError):
    """The installed quixstreams lacks an internal the workbench relies on (see :mod:`._quix`)."""


def _internal(owner: Any, path: str, method: str, params: tuple[str, ...]) -> Callable[..., Any]:
    obj = getattr(owner, path, None)
    fn = getattr(obj, method, None)
    if fn is None or not callable(fn):
        msg = (f"quixstreams {_version()} has no Application.{path}.{method}; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    names = tuple(inspect.signature(fn).parameters)
    if names[: len(params)] != params:
        msg = (f"quixstreams {_version()} changed Application.{path}.{method}{inspect.signature(fn)}; "
               f"expected parameters {params}. Port workbench/pipeline/_quix.py.")
        raise QuixInternalsError(msg)
    return fn


def _version() -> str:
    import quixstreams

    return getattr(quixstreams, "__version__", "?")


def register_periodic(app: Application, task: Callable[[], None]) -> None:
    """Call ``task()`` after every poll of ``app``'s main loop (keep it cheap; throttle it yourself)."""
    _internal(app, "_dataframe_registry", "register_periodic_task", ("task",))(task)


def force_checkpoint(app: Application) -> Callable[[], None]:
    """A function that commits ``app``'s checkpoint now (sinks flush, offsets commit)."""
    commit = _internal(app, "_processing_context", "commit_checkpoint", ("force",))
    return lambda: commit(force=True)


class PartitionFlow:
    """Pause and resume single partitions of an app's consumer (see :func:`partition_flow`)."""

    def __init__(self, pause: Callable[..., Any], resume: Callable[..., Any]) -> None:
        self._pause = pause
        self._resume = resume

    def pause(self, topic: str, partition: int) -> None:
        """Stop fetching ``topic[partition]`` (what was fetched is still delivered)."""
        from confluent_kafka import TopicPartition

        self._pause([TopicPartition(topic, partition)])

    def resume(self, topic: str, partition: int) -> None:
        """Fetch ``topic[partition]`` again from where it stopped."""
        from confluent_kafka import TopicPartition

        self._resume([TopicPartition(topic, partition)])


def partition_flow(app: Application) -> PartitionFlow:
    """Per-partition pause/resume of ``app``'s Kafka consumer (``Application._consumer``)."""
    return PartitionFlow(_internal(app, "_consumer", "pause", ("partitions",)),
                         _internal(app, "_consumer", "resume", ("partitions",)))


def assigned_partitions(app: Application, topic: str) -> Callable[[], list[int]]:
    """A function that returns the partitions of ``topic`` that ``app``'s consumer holds now."""
    assignment = _internal(app, "_consumer", "assignment", ())

    def partitions() -> list[int]:
        return sorted(tp.partition for tp in assignment() if tp.topic == topic)

    return partitions
