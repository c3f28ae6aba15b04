"""Publishing anomaly messages, acknowledged by the broker before the caller commits."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from confluent_kafka import Producer

from workbench.config import Settings
from workbench.pipeline.contracts import anomaly_headers, anomaly_key, anomaly_messages, encode_anomaly
from workbench.pipeline.exceptions import AnomalyContractError, PipelineError

__all__ = ["AnomalyPublisher"]


class AnomalyPublisher:
    """Publishes anomaly messages: :meth:`publish` returns once the broker acknowledged all of them;
    :meth:`send` and :meth:`confirm` split it, so the caller can work while the acknowledgements come.

    Parameters
    ----------
    settings : Settings
        Broker and the ``topic_anomalies`` name.
    extra_config : dict, optional
        librdkafka producer settings on top of idempotent delivery with ``acks=all``.
    flush_timeout : float
        Seconds to wait for acknowledgements before failing.
    """

    def __init__(self, settings: Settings, *, extra_config: dict[str, Any] | None = None,
                 flush_timeout: float = 30.0) -> None:
        self.settings = settings
        self.topic = settings.topic_anomalies
        self.extra_config = extra_config
        self.flush_timeout = flush_timeout
        self.published = 0
        self._pending = 0  # sent, not yet confirmed
        self._producer: Producer | None = None
        self._errors: list[str] = []
        self._thresholds: dict[str, float | None] = {}
        #: ``(message, reason)`` of messages the contract refused since the caller last cleared it.
        self.rejected: list[tuple[dict[str, Any], str]] = []

    def _open(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({**self.settings.kafka_client_config(), "enable.idempotence": True,
                                       "acks": "all", "linger.ms": 5, "compression.type": "lz4",
                                       **(self.extra_config or {})})
        return self._producer

    def connect(self) -> None:
        """Create the producer now, so that it connects and gets its idempotent producer id in the
        background (up to half a second on a busy broker) instead of on the first batch's anomalies."""
        self._open()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def threshold(self, version: str | None) -> float | None:
        """The detector threshold of ``version`` (from its ``model.json``; cached)."""
        if version is None:
            return None
        if version not in self._thresholds:
            from workbench.ml.exceptions import MLError
            from workbench.ml.registry import ModelRegistry

            try:
                meta = ModelRegistry(self.settings.models_dir).info(version)
                self._thresholds[version] = float(meta["detector"]["threshold"])
            except (MLError, OSError, KeyError, TypeError, ValueError):  # deleted or damaged since it scored
                self._thresholds[version] = None
        return self._thresholds[version]

    def publish_scored(self, scored: pa.Table | pa.RecordBatch) -> int:
        """Publish the anomalies of a scored batch and wait for their acknowledgement.

        A message the contract refuses is skipped here (the caller finds it in
        :attr:`rejected`); see :meth:`publish`.
        """
        return self.publish(anomaly_messages(scored, self.threshold))

    def publish(self, messages: list[dict[str, Any]]) -> int:
        """Produce ``messages`` (key = instance id) and flush; raise if any is not acknowledged.

        :meth:`send` then :meth:`confirm`; returns the number of messages sent.

        Raises
        ------
        PipelineError
            A message was not acknowledged within ``flush_timeout`` (the caller's checkpoint
            must then fail so that the offsets are not committed).
        """
        sent = self.send(messages)
        self.confirm()
        return sent

    def send_scored(self, scored: pa.Table | pa.RecordBatch) -> int:
        """Produce the anomalies of a scored batch without waiting; :meth:`confirm` waits for them."""
        return self.send(anomaly_messages(scored, self.threshold))

    def send(self, messages: list[dict[str, Any]]) -> int:
        """Produce ``messages`` (key = instance id) without waiting for the broker; returns how many.

        A message that does not fit the anomaly contract is not produced: it is kept, with the
        reason, in :attr:`rejected` (the sink dead-letters its source event), and the others go out.
        Nothing sent counts as delivered before :meth:`confirm` returned: the caller does other
        work (writing shards) while the broker acknowledges, and confirms before its commit.
        """
        if not messages:
            return 0
        producer = self._open()
        headers = anomaly_headers()
        sent = 0
        for message in messages:
            try:
                value, key = encode_anomaly(message), anomaly_key(message)
            except (AnomalyContractError, TypeError, ValueError) as exc:
                self.rejected.append((message, f"anomaly_contract: {exc}"))
                continue
            sent += 1
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        self._pending += sent
        return sent

    def confirm(self) -> None:
        """Wait until the broker acknowledged everything :meth:`send` produced; raise if it did not.

        Raises
        ------
        PipelineError
            A message was not acknowledged within ``flush_timeout``, or its delivery failed.
        """
        if self._producer is None:
            return
        remaining = self._producer.flush(self.flush_timeout) if self._pending else 0
        if remaining or self._errors:
            errors, self._errors = self._errors[:5], []
            msg = (f"Publishing anomalies to {self.topic!r} failed: {remaining} message(s) unacknowledged after "
                   f"{self.flush_timeout}s, delivery errors {errors}. The checkpoint is aborted so the offsets are "
                   "not committed; check the broker and restart the app (events are re-read).")
            raise PipelineError(msg)
        self.published += self._pending
        self._pending = 0

    def close(self) -> None:
        """Flush what is still queued and let the producer go (its handle closes; a later send opens a new one)."""
        if self._producer is not None:
            self._producer.flush(self.flush_timeout)
            self._producer = None
