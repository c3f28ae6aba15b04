"""The cyclic garbage collector paced by the scoring batches instead of by allocations.

With the start-up heap frozen (:meth:`~workbench.pipeline._app.WorkbenchApp.run`), a collection
walks what the stream allocated and still holds. In the middle of a batch that is every buffered
message (its headers list and tuples) and the batch being decoded; CPython 3.11 ran a full
collection about every 70k allocations, so each JSON batch walked them several times: measured
6.5 CPU µs per one-query message, a fifth of the app's cost. Between two batches almost none of
it is alive.

So while the app runs, an automatic collection only starts once :data:`YOUNG_THRESHOLD` more
tracked objects are alive than at the last one (a safety net: memory stays bounded however long
a batch takes), and the sink collects the young generations after each batch, when they are
nearly empty, and every generation after every :data:`FULL_EVERY` batches (cycles that
outlived two collections are freed too).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

__all__ = ["FULL_EVERY", "YOUNG_THRESHOLD", "BatchCollector"]

#: Net new tracked objects that start an automatic collection while the app runs (CPython's default: 700).
YOUNG_THRESHOLD: Final = 200_000
#: Batches between two collections of every generation.
FULL_EVERY: Final = 64


class BatchCollector:
    """Collects the young generations after each batch; :meth:`paced` raises the automatic threshold."""

    def __init__(self) -> None:
        self.batches = 0

    @staticmethod
    @contextlib.contextmanager
    def paced() -> Iterator[None]:
        """While the app runs: automatic collections only every :data:`YOUNG_THRESHOLD` net allocations."""
        saved = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, saved[1], saved[2])
        try:
            yield
        finally:
            gc.set_threshold(*saved)

    def after_batch(self) -> None:
        """Collect what the batch left in the young generations (all generations now and then)."""
        self.batches += 1
        gc.collect(2 if self.batches % FULL_EVERY == 0 else 1)
