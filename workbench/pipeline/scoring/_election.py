"""The trainer election through the broker: works across machines with only Kafka shared.

Every scoring process joins one consumer group on a dedicated one-partition topic
(``<events topic>.trainer``, group ``<scoring group>.trainer``); the member Kafka assigns
partition 0 to is the trainer. The assignment is ``cooperative-sticky``, so a process that joins
does not take the role from the trainer; when the trainer stops (it leaves the group) the role
moves at once, and when it dies or hangs the group coordinator drops it after the session timeout
(``session_timeout_s``) and gives partition 0 to another member.

Fencing. A local "I own partition 0" can be stale: a process stopped (SIGSTOP, a long GC or swap
pause, a network partition) keeps believing it until it talks to the broker again, while the
group has moved on. So ownership counts only while it is *confirmed*: every ``confirm_every_s``
the owner commits an offset of partition 0 synchronously, which the coordinator accepts only
from a member of the current generation (a dropped member gets ``UNKNOWN_MEMBER_ID`` or
``ILLEGAL_GENERATION``). :attr:`BrokerLease.held` is true only within ``fence_s`` of the last
accepted commit, and ``fence_s`` is shorter than the time the coordinator needs to give the
partition to someone else (``session_timeout_s`` minus one heartbeat interval), so two processes
never see ``held`` true at the same moment. A trainer checks ``held`` right before each
scheduling decision; what it starts (a training subprocess) may finish after a hand-over, which
the model registry tolerates: publishing is idempotent by recipe and ``CURRENT`` only moves
forward (:mod:`workbench.ml.registry`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from workbench.config import Settings

__all__ = ["BrokerLease", "election_group", "election_topic"]

logger = logging.getLogger(__name__)


def election_topic(settings: Settings) -> str:
    """The one-partition topic of the election (follows the events topic, so test topics are private)."""
    return f"{settings.topic_query_events}.trainer"


def election_group(group: str) -> str:
    """The consumer group of the election among the scoring processes of consumer group ``group``."""
    return f"{group}.trainer"


class BrokerLease:
    """The trainer role, held by the member of a consumer group that owns partition 0 of a topic.

    Same interface as :class:`workbench.ml.registry.TrainerLease` (``held``, ``try_acquire``,
    ``release``). A background thread keeps the membership (polls) and confirms ownership.

    Parameters
    ----------
    settings : Settings
        Kafka connection (:meth:`Settings.kafka_client_config`) and topic names.
    group : str
        Consumer group of the scoring app (the election uses ``<group>.trainer``).
    session_timeout_s : float
        The Kafka session timeout: how long a dead trainer keeps the role (the broker's
        ``group.min.session.timeout.ms``, 6 s by default, is the lower bound).
    confirm_every_s : float
        Seconds between ownership confirmations (synchronous offset commits).
    """

    def __init__(self, settings: Settings, group: str, *, session_timeout_s: float = 6.0,
                 confirm_every_s: float = 0.5) -> None:
        self.settings = settings
        self.topic = election_topic(settings)
        self.group = election_group(group)
        self.session_timeout_s = session_timeout_s
        self.heartbeat_s = session_timeout_s / 3
        # Shorter than the coordinator's hand-over (session timeout minus one heartbeat interval)
        # by a margin for the check-to-act time of the caller.
        self.fence_s = max(0.5, session_timeout_s - self.heartbeat_s - 1.5)
        self.confirm_every_s = min(confirm_every_s, self.fence_s / 3)
        self._owner = False
        self._confirmed_at = float("-inf")
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.joined = False  # the first assignment (possibly empty) arrived

    # --- the lease interface ---------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Whether this process is the trainer: owns partition 0, confirmed less than ``fence_s`` ago."""
        with self._state:
            return self._owner and time.monotonic() - self._confirmed_at < self.fence_s

    def confirmed_at(self) -> float | None:
        """``time.monotonic()`` of the last accepted confirmation while owner (None when not the owner)."""
        with self._state:
            return self._confirmed_at if self._owner else None

    def try_acquire(self) -> bool:
        """Join the election (first call; never blocks) and say whether this process is the trainer."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="trainer-election", daemon=True)
            self._thread.start()
        return self.held

    def release(self) -> None:
        """Leave the group (the role moves to another member at once, without the session timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.session_timeout_s + 5)
            self._thread = None
        with self._state:
            self._owner = False

    # --- the background thread ------------------------------------------------------------------
    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        from workbench.broker import TopicSpec, ensure_topics

        ensure_topics(self.settings, [TopicSpec(self.topic, 1, {"retention.ms": str(24 * 3600 * 1000)})])
        config = {
            **self.settings.kafka_client_config(),
            "group.id": self.group,
            "client.id": f"trainer-election-{socket.gethostname()}-{os.getpid()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": int(self.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(self.heartbeat_s * 1000),
            # also the rebalance timeout: how long a rebalance waits for a frozen member to rejoin
            # (the default 300 s would leave the group without a trainer that long)
            "max.poll.interval.ms": int(max(10.0, 2 * self.session_timeout_s) * 1000),
        }
        consumer = Consumer(config, logger=logger)
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        return consumer

    def _set_owner(self, owner: bool, why: str) -> None:
        with self._state:
            if owner != self._owner:
                logger.info("trainer election: partition 0 %s (%s) group=%s", "assigned" if owner else "gone",
                            why, self.group)
            self._owner = owner
            if not owner:
                self._confirmed_at = float("-inf")

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if not self.joined:
            self.joined = True
            logger.info("trainer election: member of group %s (topic %s)", self.group, self.topic)
        if any(p.partition == 0 for p in partitions):
            self._set_owner(True, "assigned")

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        if any(p.partition == 0 for p in partitions):
            self._set_owner(False, "revoked")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        if any(p.partition == 0 for p in partitions):
            self._set_owner(False, "lost")

    def _confirm(self, consumer: Any) -> None:
        """Commit on partition 0 synchronously: accepted only from a member of the current generation."""
        from confluent_kafka import KafkaException, TopicPartition

        started = time.monotonic()
        holder = f"{socket.gethostname()}:{os.getpid()}"
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, 0, 0, metadata=holder)], asynchronous=False)
        except KafkaException as exc:
            # e.g. REBALANCE_IN_PROGRESS while a member joins: the last confirmation stays valid
            # for what is left of fence_s (safety rests on the last *accepted* commit only)
            logger.info("trainer election: ownership not confirmed (%s)", exc.args[0])
            return
        with self._state:
            if self._owner:
                self._confirmed_at = started  # the commit was sent after this moment

    def _run(self) -> None:
        from confluent_kafka import KafkaException

        consumer = None
        last_confirm = float("-inf")
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                consumer.poll(0.1)  # keeps the membership; runs the assignment callbacks
                if self._owner and time.monotonic() - last_confirm >= self.confirm_every_s:
                    last_confirm = time.monotonic()
                    self._confirm(consumer)
                self.error = None
            except (KafkaException, OSError) as exc:  # the broker is away: not the trainer until it is back
                self.error = str(exc)
                self._set_owner(False, f"error: {exc}")
                logger.warning("trainer election: %s", exc)
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        consumer.close()
                    consumer = None
                self._stop.wait(1.0)
            except Exception as exc:  # never let the election thread die silently
                self.error = repr(exc)
                self._set_owner(False, f"error: {exc!r}")
                logger.exception("trainer election failed; retrying")
                self._stop.wait(1.0)
        self._set_owner(False, "leaving")
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()  # leaves the group: another member gets partition 0 now
