"""``workbench demo``: the whole product, end to end, on generated data, leaving nothing running."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from workbench.config import Settings
from workbench.runtime._status import anomaly_count
from workbench.runtime._workbench import Workbench

__all__ = ["DemoResult", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo did, for the closing summary."""

    data: Path
    home: Path
    events: int
    days: list[str]
    scored_events: int | None
    anomalies: int | None
    model_versions: list[str]
    evaluation_day: str | None
    detector: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable closing summary."""
        lines = [
            "",
            "=== Pulse Workbench demo ===",
            f"data            {self.data} ({self.events:,} events, days {', '.join(self.days)})",
            f"demo home       {self.home} (cleared at every demo run)",
            f"scored events   {self.scored_events:,}" if self.scored_events is not None else "scored events   ?",
            f"anomalies       {self.anomalies:,} in the lakehouse" if self.anomalies is not None else "anomalies ?",
            f"model versions  {', '.join(self.model_versions) or 'none'}",
        ]
        if self.detector:
            # a one-day log is scored by the model of that same day: say so next to its figures
            sample = (" - in-sample: the model was trained on this day" if self.model_versions
                      and self.model_versions[-1].endswith(f"-{self.evaluation_day}") else "")
            lines.append(f"detection on {self.evaluation_day} (labels from the generator{sample}):")
            keys = ["PR-AUC", "F1", "F1 @ baseline volume", "precision", "recall", "alerts per 10k"]
            lines.append(f"  {'metric':<28}{'detector':>10}{'baseline':>10}")
            keys += sorted(k for k in self.detector if k.startswith("recall["))
            for key in keys:
                theirs = self.baseline.get("F1" if key == "F1 @ baseline volume" else key)
                lines.append(f"  {key:<28}{_fmt(self.detector.get(key)):>10}{_fmt(theirs):>10}")
        if self.report:
            lines.append(f"report          {self.report / 'index.html'}")
        timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items())
        lines.append(f"time            {timing}")
        return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def _pick(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if isinstance(value, int | float)}


def run_demo(settings: Settings, *, days: int = 4, instances: int = 16, seed: int = 0, pack: int = 100,
             report: bool = True, progress: bool = True, timeout: float = 1800.0) -> DemoResult:
    """Generate a log, run Kafka + pipeline + replay at max speed with daily retraining, evaluate
    the detector against the generator's labels, write the reports, stop everything.
    """
    from workbench.data.generator import generate

    timings: dict[str, float] = {}
    started = time.monotonic()
    data = settings.data_dir / f"redset_{days}d_{instances}i_s{seed}.parquet"
    if not data.exists():
        logger.info("generating %d days x %d instances (seed %d) into %s", days, instances, seed, data)
        data.parent.mkdir(parents=True, exist_ok=True)
        partial = data.with_suffix(".partial.parquet")
        generate(partial, days=days, instances=instances, seed=seed, progress=progress)
        partial.replace(data)
    timings["generate"] = time.monotonic() - started
    metadata = pq.ParquetFile(data)
    events = metadata.metadata.num_rows
    first_day, last_day = _days(data)
    day_list = [str(first_day + dt.timedelta(days=i)) for i in range((last_day - first_day).days + 1)]

    mark = time.monotonic()
    demo = _fresh_demo_home(settings)
    workbench = Workbench.start(data=data, speedup="max", pack=pack, settings=demo, reset=True)
    try:
        status = workbench.wait(timeout=timeout, progress=progress, settled=False)
        if not status.drained:
            logger.warning("the pipeline had not drained after %.0f s: %s", timeout, status)
        elif status.waiting_for_model:  # a log of one day: no later day finishes it
            workbench.train_waiting_days()
        # every result landed: trainings done, stored events rescored, the last day judged (its persistent
        # runs are anomalies too: stopping before it would make the count depend on timing)
        workbench.wait(timeout=300, progress=False, settle_timeout=300)
        timings["pipeline"] = time.monotonic() - mark
        scored = _scored_events(demo)
    finally:
        workbench.stop(kafka=None)
    anomalies = anomaly_count(demo)  # after the stop: final, and not the status' cached figure
    from workbench.ml.registry import ModelRegistry

    registry = ModelRegistry(demo.models_dir)
    result = DemoResult(data=data, home=demo.home, events=events, days=day_list, scored_events=scored,
                        anomalies=anomalies, model_versions=registry.versions(), evaluation_day=None,
                        seconds=timings)
    if registry.current():
        mark = time.monotonic()
        from workbench.ml.evaluate import evaluate

        result.evaluation_day = str(last_day)
        result.detector = _pick(evaluate(demo, last_day, "current", data=data)["metrics"])
        result.baseline = _pick(evaluate(demo, last_day, "baseline", data=data)["metrics"])
        timings["evaluate"] = time.monotonic() - mark
    if report:
        mark = time.monotonic()
        from workbench.reports import run_report

        result.report = run_report(demo, run_id=f"demo-{days}d-{instances}i-s{seed}", data=data,
                                   progress=progress)
        timings["report"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    return result


#: A file in the demo home that says the demo created it (and may delete it).
DEMO_MARKER = ".workbench-demo"


def _fresh_demo_home(settings: Settings) -> Settings:
    """Settings for a demo run that starts from nothing, so the same seed gives the same numbers.

    The demo owns ``<home>/demo`` (broker data, state, shards, models, stores, logs) and clears it
    first; the rest of the home, the generated input under ``<home>/data`` and the reports folder
    are left alone. On an external cluster the demo uses topics of its own instead of clearing any.
    """
    import contextlib
    import shutil
    import uuid

    from workbench.broker import LocalKafka
    from workbench.runtime._workbench import WorkbenchStateError
    from workbench.runtime.supervisor import read_state

    demo = settings.with_overrides(home=settings.home / "demo", reports_dir=settings.resolved_reports_dir)
    state = read_state(demo.home)
    if state and state.get("state") != "stopped":
        with contextlib.suppress(WorkbenchStateError):  # a demo killed before it could clean up
            Workbench.attach(demo).stop(kafka=True)
    if demo.manages_kafka:
        LocalKafka(demo).stop()
    else:
        suffix = f"demo-{uuid.uuid4().hex[:8]}"
        demo = demo.with_overrides(**{name: f"{getattr(demo, name)}.{suffix}" for name in (
            "topic_query_events", "topic_anomalies", "topic_dead_letter", "topic_replay_control",
            "topic_replay_state")})
    marker = demo.home / DEMO_MARKER
    if demo.home.exists():
        if not marker.is_file():
            msg = (f"{demo.home} exists but was not created by `workbench demo` (it has no {DEMO_MARKER} "
                   "marker), so the demo will not delete it. Move it away, or set WORKBENCH_HOME elsewhere.")
            raise WorkbenchStateError(msg)
        shutil.rmtree(demo.home)
    demo.home.mkdir(parents=True, mode=0o700)
    marker.write_text("Created by `workbench demo`, which deletes this folder at its next run.\n")
    return demo


def _days(path: Path) -> tuple[dt.date, dt.date]:
    from workbench.data.schema import validate

    summary = validate(path)
    return summary.first_arrival.date(), summary.last_arrival.date()


def _scored_events(settings: Settings) -> int | None:
    from workbench.store.shards import read_shards

    try:
        table = read_shards(settings.shards_dir, columns=["model_version"])
    except Exception as exc:
        logger.warning("cannot read shards: %s", exc)
        return None
    return table.num_rows - table.column("model_version").null_count


