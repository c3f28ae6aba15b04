"""The ML scoring app: ``redshift.query_events`` -> scored Arrow shards + ``redshift.anomalies``.

Modules (private, re-exported here): ``_sink`` (buffering, storing and publishing a batch),
``_steps`` (its decode, event-time guard and score steps), ``_publisher`` (acknowledged anomaly
delivery), ``_days`` (durable unscored days), ``_rescore`` (rescoring thread), ``_training``
(training schedule), ``_resume`` (resuming it after a restart), ``_pacing`` (per-partition
backpressure), ``_maintenance`` (shard compaction/retention), ``_app`` (wiring and lifecycle),
``_loop`` (the app's per-poll and after-flush step).

Pipeline (one Quix app in its own process: ``workbench app scoring``)::

    bytes message --(no per-message work)--> ScoringSink.add (buffer per partition)
    checkpoint (every batch_seconds, as soon as a partition buffers batch_rows rows, or after a
    poll that came back empty):
        ScoringSink.write(partition batch):
            decode all buffered messages at once with workbench.data.codec.decode_values
            -> event-time guard -> malformed or implausible messages to the dead-letter topic
            -> Scorer.score(batch) (one vectorised ONNX call per partition batch; a failure
               is narrowed down to its message by bisection)
            -> produce the anomalies (the broker acknowledges them meanwhile)
            -> write_shard per event day (name = partition + first offset of those rows)
        once every partition is written: wait for every anomaly's acknowledgement,
        then Quix commits the offsets of the checkpoint.

Delivery guarantee (at-least-once, made effectively exactly-once by idempotence)
    Quix commits a checkpoint's offsets only after every sink's ``flush()`` returned (and its own
    producer flushed). :class:`ScoringSink` does all durable work inside ``flush()``: each shard
    file is fsync-ed and atomically renamed by ``write()``, and before ``flush()`` returns the
    anomaly producer is flushed with every delivery acknowledged (a failed delivery raises, which
    aborts the checkpoint: no offset is committed). So an offset is committed only after its
    event is in a shard and its anomaly is on the broker. A crash before the commit makes the
    app re-read from the last committed offset: the shards are rewritten under the same
    deterministic names (same partition, same first offset of the day's rows in the batch, see
    :mod:`workbench.store.shards`), so they REPLACE the earlier files and every event is stored
    exactly once; the anomalies are published again, which is harmless because the anomaly sink
    is idempotent on ``(instance_id, query_id, model_version)``.

No query goes unscored, and each is scored by its own day's version
    The Scorer runs in event-time mode: each row gets the version :mod:`workbench.ml.selection`
    gives its UTC event day. Rows of a day whose version does not exist yet get null score
    columns; they are stored with ``model_version = null`` and their event days are recorded
    (durably, before the commit) in ``<state_dir>/scoring/unscored_days.json``. As soon as a
    day's final version exists, a helper thread runs
    :func:`~workbench.store.shards.rescore_unscored` over the ready days with an event-time
    scorer, publishing each rescored shard's anomalies (acknowledged) *before* the shard is
    rewritten as scored, so a crash in between only re-publishes. The consuming thread never
    waits for it (rescoring shares the CPU, nothing else). A partition whose events run more than
    about ``every_n_days + 1`` days ahead of training pauses until training catches up (``_pacing``).

Training
    Event time is the watermark: the newest event time every partition still delivering has
    stored (:meth:`ScoringSink.watermark_us`), so the model of a day does not depend on which
    partition was consumed first. Once it is ``training_grace_s`` past midnight (default 10
    minutes of event time), the finished day is handed to :meth:`TrainingSupervisor.maybe_schedule`
    - *after* the sink flushed, so the day's shards are on disk. Training runs as a subprocess on
    the shards and never blocks scoring; the Scorer loads the new version at its next batch.
    :meth:`TrainingSupervisor.poll` runs periodically (reaps, retries failed or killed runs with backoff).
    A restarted app takes the watermark from the shards once nothing is left to deliver
    (``_resume``), so it schedules the same trainings without new input.

Batching
    Rows are buffered per partition by Quix's ``BatchingSink`` and scored per partition batch;
    a flush happens every ``batch_seconds`` (the checkpoint interval), as soon as one
    partition holds ``batch_rows`` rows, or after a poll that came back empty (the stream paused:
    the partial batch is not held until the checkpoint; at most four such flushes per
    ``batch_seconds``) - the last two are forced checkpoints - never one row per inference call.
    Each flush writes one shard per (partition, event day): at very low event rates many small
    shards result; raise ``batch_seconds`` there (it is also the anomaly latency).
"""

from __future__ import annotations

from workbench.pipeline.contracts import FEATURE_COLUMNS, anomaly_messages
from workbench.pipeline.scoring._app import APP_NAME, ScoringApp, run_scoring
from workbench.pipeline.scoring._days import UNSCORED_FILE, UnscoredDays, unscored_days
from workbench.pipeline.scoring._publisher import AnomalyPublisher
from workbench.pipeline.scoring._rescore import Rescorer
from workbench.pipeline.scoring._sink import ScoringSink
from workbench.pipeline.scoring._training import TrainingSchedule

__all__ = [
    "APP_NAME",
    "FEATURE_COLUMNS",
    "UNSCORED_FILE",
    "AnomalyPublisher",
    "Rescorer",
    "ScoringApp",
    "ScoringSink",
    "TrainingSchedule",
    "UnscoredDays",
    "anomaly_messages",
    "run_scoring",
    "unscored_days",
]
