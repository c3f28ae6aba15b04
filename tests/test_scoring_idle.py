"""The scoring app's idle exit waits for a residual pass that started after the last rescoring ended.

A settled day whose rows waited for rescoring is judged (runtime-residual windows, persistent runs) by
the maintenance thread once they are scored. A pass that started while the rescoring thread was still
taking the day out of the unscored set finds the day waiting; the app must not stop idle before the
next pass, or the run's lakehouse lacks that day's persistent runs (a race seen once on CI between two
runs that should have stored the same rows). The loop's state is built by hand here; the clock is real.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace

from workbench.config import Settings
from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._days import UnscoredDays
from workbench.pipeline.scoring._loop import ScoringLoop
from workbench.pipeline.scoring._maintenance import ShardMaintenance
from workbench.pipeline.scoring._rescore import Rescorer


def _idle_loop(tmp_path: Path) -> ScoringLoop:
    """A loop idle for 10 s (every message long consumed), with nothing running."""
    settings = Settings(home=tmp_path)
    status = AppStatus(settings, "scoring")
    loop = ScoringLoop.__new__(ScoringLoop)
    now = time.monotonic()
    loop.sink = SimpleNamespace(last_message_at=now - 10.0, buffered_rows=0)
    loop._idle_exit, loop._assigned_at, loop._started = 4.0, now - 20.0, now - 30.0
    loop.rescorer = Rescorer(settings, UnscoredDays(tmp_path / "unscored.json"), status)
    loop.maintenance = ShardMaintenance(settings, status, window_days=1)
    loop.schedule, loop.pacer, loop.scorer = None, None, None
    return loop


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
