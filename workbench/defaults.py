"""The one home of every tunable default that more than one module uses.

Functions, CLIs and the supervisor's process specs refer to these names instead of repeating the
numbers, so a default changes in one place.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANALYTICS_GRACE_MINUTES",
    "ANALYTICS_RETENTION_DAYS",
    "ANALYTICS_WINDOW_MINUTES",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "REPLAY_BATCH_SIZE",
    "REPLAY_ENCODING",
    "REPLAY_PACK",
    "REPLAY_SPEEDUP",
    "SCORING_BATCH_ROWS",
    "SCORING_BATCH_SECONDS",
    "TRAIN_EVERY_N_DAYS",
    "TRAIN_MAX_ROWS",
    "TRAIN_MAX_SEED",
    "TRAIN_WINDOW_DAYS",
]

#: Training: row cap of one training set (sampled down to it).
TRAIN_MAX_ROWS: Final = 400_000
#: Training: days of events in one training window.
TRAIN_WINDOW_DAYS: Final = 7
#: The largest training seed (scikit-learn's ``random_state`` takes 32 bits).
TRAIN_MAX_SEED: Final = 2**32 - 1
#: Training: train every N-th finished day.
TRAIN_EVERY_N_DAYS: Final = 1

#: Scoring: rows per partition batch, and the longest time between flushes.
SCORING_BATCH_ROWS: Final = 16_384
SCORING_BATCH_SECONDS: Final = 1.0

#: Stream analytics: window length, grace (event time) and retention (data time) of windows.
ANALYTICS_WINDOW_MINUTES: Final = 10.0
ANALYTICS_GRACE_MINUTES: Final = 5.0
ANALYTICS_RETENTION_DAYS: Final = 8.0

#: Replay: event seconds per wall second, queries per message, most rows per transaction.
REPLAY_SPEEDUP: Final = 600.0
#: The default message encoding of the workbench and ``workbench replay``: packed Arrow IPC
#: (``arrow``, up to REPLAY_PACK queries of one instance per message) is the cheapest to encode and
#: decode per event (the README's "Message contracts" has the measured figures). ``json`` (one
#: query per message) is kept for other Kafka tools; ``arrow-zstd`` saves bytes over a slow network.
REPLAY_ENCODING: Final = "arrow"
REPLAY_PACK: Final = 100
#: Paced, a transaction carries the rows of one tick (0.1 s); this bounds it when unpaced or catching
#: up. Every transaction costs the broker a produce request per partition, its verification, the
#: coordinator's round trips and markers: 20,000 rows (~200 packed messages) make four times fewer
#: of them than 5,000 at max speed.
REPLAY_BATCH_SIZE: Final = 20000
#: ... and at most this many messages: what a transaction costs the replay's memory is per message
#: (one query per message at 20,000 rows: peak RSS 250 -> 500 MB, for 1 % more rows/s).
REPLAY_BATCH_MESSAGES: Final = 5000

#: Logs of every process the workbench starts rotate at this size, keeping this many old files.
LOG_MAX_BYTES: Final = 10 * 1024**2
LOG_BACKUPS: Final = 3
