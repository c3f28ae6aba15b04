"""``Workbench``: the whole product from a notebook or script, in a few calls.

``Workbench.start(data=...)`` makes a broker available (starting the local Kafka when no cluster
is configured), provisions the topics and launches a supervisor daemon that runs the pipeline
apps and the replay as separate processes. It returns at once: nothing runs in the caller's
process, so a notebook kernel stays responsive, "interrupt kernel" included. Any other process
can ``Workbench.attach()`` to the same WORKBENCH_HOME; replay commands travel over the control
topic, status comes from the state topic, the apps' status files, the broker and the stores.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._fs import pid_alive
from workbench.broker import LocalKafka, broker_status, ensure_broker
from workbench.config import Settings, get_settings
from workbench.exceptions import WorkbenchError
from workbench.replay import ReplayController, ReplayStatus
from workbench.runtime._status import WorkbenchStatus, anomaly_count, consumer_lag, topic_message_count
from workbench.runtime.supervisor import ProcessSpec, read_state, run_dir, spec_dict, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from workbench.ml.rescore import RescoreResult

__all__ = ["DEFAULT_APPS", "Workbench", "WorkbenchStateError"]

logger = logging.getLogger(__name__)

#: The pipeline apps and the topic each consumes (for lag).
DEFAULT_APPS: tuple[str, ...] = ("scoring", "analytics", "anomaly-sink")


class WorkbenchStateError(WorkbenchError, RuntimeError):
    """The workbench is not in the state the call needs (e.g. attach with nothing running)."""


class _InProcessSettings(Settings):
    """Settings whose Kafka clients log through Python logging (``workbench.kafka``), not stderr.

    The workbench's own clients run in the caller's process, a notebook kernel: librdkafka's
    lines (e.g. "Connection refused" after a stop) would land in cell output. Apps are other
    processes and keep their own logging.
    """

    def kafka_client_config(self) -> dict[str, Any]:
        return {**super().kafka_client_config(), "logger": logging.getLogger("workbench.kafka")}


class Workbench:
    """A running workbench: replay control, status and data access.

    Use :meth:`start` or :meth:`attach` to get one; it is also a context manager that stops
    everything on exit.
    """

    def __init__(self, settings: Settings, *, replay_id: str = "default", apps: Sequence[str] = DEFAULT_APPS,
                 started_kafka: bool = False) -> None:
        self.settings = _InProcessSettings.model_construct(
            _fields_set=settings.model_fields_set, **{k: getattr(settings, k) for k in Settings.model_fields})
        self.replay_id = replay_id
        self.apps = tuple(apps)
        self.started_kafka = started_kafka
        self._controller = ReplayController(settings, replay_id)
        self._anomaly_cache: tuple[float, int | None] = (0.0, None)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        data: str | Path | None = None,
        *,
        speedup: float | str = 600,
        pack: int = 1,
        encoding: str | None = None,
        settings: Settings | None = None,
        apps: Sequence[str] = DEFAULT_APPS,
        replay_id: str = "default",
        reset: bool = True,
        retrain_every_days: int = 1,
        idle_exit: float | None = None,
    ) -> Workbench:
        """Start Kafka (if needed), the pipeline apps and the replay of ``data``; return at once.

        Parameters
        ----------
        data : path, optional
            A Parquet query log to replay (a file, or a folder of per-day files from
            ``workbench prepare --split day``); without it only the apps start (replay later, or
            attach to a replay another process runs).
        speedup : float or "max"
            Event seconds per wall second; change it live with :meth:`set_speed`.
        pack : int
            Most queries per Kafka message (N > 1 packs one instance's queries, much faster).
        encoding : str, optional
            Message encoding (:data:`workbench.data.codec.ENCODINGS`); default ``json`` for
            ``pack=1``, ``arrow`` otherwise.
        reset : bool
            Replay ``data`` from its first row (default); False resumes a saved position.
        retrain_every_days : int
            Training cadence of the scoring app.
        idle_exit : float, optional
            Apps exit after this many idle seconds (used by batch runs such as the demo).
        """
        settings = settings or get_settings()
        state = read_state(settings.home)
        if state and state.get("state") in ("running", "stopping") and pid_alive(state.get("supervisor_pid")):
            msg = (f"A workbench already runs under {settings.home} (supervisor pid {state['supervisor_pid']}). "
                   "Use Workbench.attach() to connect to it, or stop() it first.")
            raise WorkbenchStateError(msg)
        if data is not None:
            from workbench.replay import validate_log

            validate_log(data)
        kafka_was_running = settings.manages_kafka and broker_status(settings).running
        ensure_broker(settings)
        started_kafka = settings.manages_kafka and not kafka_was_running

        python = [sys.executable, "-m", "workbench.cli"]
        specs: list[ProcessSpec] = []
        for app in apps:
            argv = [*python, "app", app]
            if app == "scoring":
                argv += ["--every-n-days", str(retrain_every_days)]
            if idle_exit:
                argv += ["--idle-exit", str(idle_exit)]
            specs.append(ProcessSpec(app, argv))
        if data is not None:
            replay = [*python, "replay", str(Path(data).expanduser().resolve()), "--speedup", str(speedup),
                      "--pack", str(pack), "--replay-id", replay_id, "--quiet"]
            if encoding is not None:
                replay += ["--encoding", encoding]
            specs.append(ProcessSpec("replay", [*replay, "--reset"] if reset else replay, restart_argv=replay))
        run = run_dir(settings.home)
        run.mkdir(parents=True, exist_ok=True)
        (run / "state.json").unlink(missing_ok=True)
        write_json_atomic(run / "spec.json", spec_dict(specs, settings.to_env(), started_kafka=started_kafka,
                                                       replay_id=replay_id, apps=list(apps)))
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        with (settings.logs_dir / "supervisor.log").open("ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "workbench.runtime.supervisor", "--home", str(settings.home)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **settings.to_env()}, cwd=settings.home,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = read_state(settings.home)
            if state and state.get("processes"):
                break
            time.sleep(0.1)
        else:
            msg = f"The supervisor did not start within 20 s; see {settings.logs_dir / 'supervisor.log'}."
            raise WorkbenchStateError(msg)
        logger.info("workbench started under %s: %s", settings.home, ", ".join(s.name for s in specs))
        return cls(settings, replay_id=replay_id, apps=apps, started_kafka=started_kafka)

    @classmethod
    def attach(cls, settings: Settings | None = None, *, replay_id: str | None = None) -> Workbench:
        """Connect to the workbench running under the same WORKBENCH_HOME (from any process).

        Broker address, ports and topics are taken from the running workbench, so only
        WORKBENCH_HOME (or ``settings.home``) needs to match.
        """
        settings = settings or get_settings()
        spec_path = run_dir(settings.home) / "spec.json"
        state = read_state(settings.home)
        if not state or not pid_alive(state.get("supervisor_pid")) or state.get("state") == "stopped":
            msg = (f"No workbench runs under {settings.home}. Start one with Workbench.start(data=...) "
                   "or `workbench demo`, or set WORKBENCH_HOME to the home of the running one.")
            raise WorkbenchStateError(msg)
        import orjson

        spec = orjson.loads(spec_path.read_bytes())
        settings = Settings.from_env({**spec.get("env", {}), "WORKBENCH_HOME": str(settings.home)})
        return cls(settings, replay_id=replay_id or spec.get("replay_id", "default"),
                   apps=spec.get("apps", DEFAULT_APPS), started_kafka=bool(spec.get("started_kafka")))

    @property
    def running(self) -> bool:
        """Whether the supervisor of this workbench is alive."""
        state = read_state(self.settings.home)
        return bool(state) and state.get("state") != "stopped" and pid_alive(state.get("supervisor_pid"))

    def stop(self, *, kafka: bool | None = None, timeout: float = 60.0) -> None:
        """Stop the replay, the apps and the supervisor; and Kafka when this workbench started it.

        ``kafka=True``/``False`` forces stopping or keeping the managed broker.
        """
        state = read_state(self.settings.home)
        pid = state.get("supervisor_pid") if state else None
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and pid_alive(pid):
                time.sleep(0.1)
            if pid_alive(pid):
                logger.warning("supervisor did not stop within %.0f s; killing it", timeout)
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        stop_kafka = self.started_kafka if kafka is None else kafka
        if stop_kafka and self.settings.manages_kafka:
            LocalKafka(self.settings).stop()

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- replay control (any process: commands go over the control topic) ----------------------
    def set_speed(self, speedup: float | str) -> None:
        """Event seconds per wall second (0 or "max" = as fast as possible)."""
        self._controller.set_speed(speedup)

    def pause(self) -> None:
        self._controller.pause()

    def resume(self) -> None:
        self._controller.resume()

    def seek(self, event_time: datetime | str) -> None:
        """Continue the replay from ``event_time`` (UTC if no zone)."""
        self._controller.seek(event_time)

    def reset(self) -> None:
        """Replay from the first row again."""
        self._controller.reset()

    # -- status --------------------------------------------------------------------------------
    def replay_status(self) -> ReplayStatus | None:
        """The replay's latest status (from the state topic)."""
        return self._controller.status()

    def status(self) -> WorkbenchStatus:
        """One snapshot: replay clock and progress, rates, lag per app, model, anomalies, late events,
        dead letters and the supervised processes."""
        from workbench.ml.registry import ModelRegistry
        from workbench.pipeline import consumer_group, read_app_status

        state = read_state(self.settings.home) or {}
        apps = {name: read_app_status(self.settings, name) or {} for name in self.apps}
        topics = {"scoring": self.settings.topic_query_events, "analytics": self.settings.topic_query_events,
                  "anomaly-sink": self.settings.topic_anomalies}
        default_topic = self.settings.topic_query_events
        lag = {name: consumer_lag(self.settings, consumer_group(name), topics.get(name, default_topic))
               for name in self.apps}
        registry = ModelRegistry(self.settings.models_dir)
        analytics = apps.get("analytics") or {}
        late = analytics["counters"].get("late_events", 0) if "counters" in analytics else None
        return WorkbenchStatus(
            replay=self._controller.status(),
            processes=state.get("processes", {}),
            apps=apps,
            lag=lag,
            model_version=registry.current(),
            model_versions=len(registry.versions()),
            anomalies=self._anomaly_count(),
            late_events=late,
            dead_letters=topic_message_count(self.settings, self.settings.topic_dead_letter),
        )

    def _anomaly_count(self) -> int | None:
        # Reading the lakehouse costs ~0.1 s: refresh at most every 5 s.
        at, cached = self._anomaly_cache
        if time.monotonic() - at < 5.0:
            return cached
        value = anomaly_count(self.settings)
        if value is None:  # keep showing the last figure while the lakehouse is busy
            value = cached
        self._anomaly_cache = (time.monotonic(), value)
        return value

    def wait(self, *, timeout: float | None = None, progress: bool = True, poll: float = 1.0) -> WorkbenchStatus:
        """Block until the replay has finished and every app has consumed all it was sent.

        Shows a progress bar (terminal or notebook) unless ``progress=False``.
        """
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=0, unit="events", unit_scale=True, disable=not progress, desc="pipeline")
        try:
            while True:
                status = self.status()
                if status.replay:
                    # Progress is what the slowest app has processed, not what the replay has sent.
                    processed = min(status.events_processed.values(), default=0)
                    bar.total = status.replay.rows_total
                    bar.n = min(processed, bar.total)
                    clock = status.event_time.strftime("%Y-%m-%d %H:%M") if status.event_time else "-"
                    bar.set_postfix_str(
                        f"replayed {status.replay.fraction:.0%} to {clock} UTC, "
                        f"model {status.model_version or '-'}, anomalies {status.anomalies or 0:,}",
                        refresh=False,
                    )
                    bar.refresh()
                if status.drained:
                    return status
                failed = [n for n, p in status.processes.items() if p.get("state") == "failed"]
                if failed:
                    msg = f"Workbench process(es) failed: {failed}; see {self.settings.logs_dir}."
                    raise WorkbenchStateError(msg)
                if deadline is not None and time.monotonic() > deadline:
                    return status
                time.sleep(poll)
        finally:
            bar.close()

    # -- data ----------------------------------------------------------------------------------
    def anomalies(self, **filters: Any) -> pd.DataFrame:
        """Anomalies from the lakehouse (see :func:`workbench.analysis.read.anomalies`)."""
        from workbench.analysis import read

        return read.anomalies(self.settings, **filters)

    def window_stats(self, **filters: Any) -> pd.DataFrame:
        """10-minute per-instance aggregates (see :func:`workbench.analysis.read.window_stats`)."""
        from workbench.analysis import read

        return read.window_stats(self.settings, **filters)

    def shards(self, days: Sequence[str] | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Every scored event (Arrow shards), optionally for some days and columns."""
        from workbench.store.shards import read_shards

        return read_shards(self.settings.shards_dir, days=days, columns=columns)

    def models(self) -> list[dict[str, Any]]:
        """The model versions with their metadata, oldest first."""
        from workbench.ml.registry import ModelRegistry

        registry = ModelRegistry(self.settings.models_dir)
        return [registry.info(version) for version in registry.versions()]

    def rescore(self, version: str, *, start: datetime | str | None = None, end: datetime | str | None = None,
                instances: Sequence[int] | None = None, progress: bool = True) -> RescoreResult:
        """Score the stored shards of ``[start, end)`` with ``version``; its anomalies go to the lakehouse.

        See :func:`workbench.ml.rescore.rescore` (idempotent, resumable, one day at a time);
        returns its :class:`~workbench.ml.rescore.RescoreResult`.
        """
        from workbench.ml.rescore import rescore

        return rescore(self.settings, version, start=start, end=end, instances=instances, progress=progress)

    def controls(self) -> Any:
        """An ipywidgets panel to steer and watch the replay (see :mod:`workbench.ui`)."""
        from workbench.ui import control_panel

        return control_panel(self)

    def __repr__(self) -> str:
        return f"Workbench(home={str(self.settings.home)!r}, replay_id={self.replay_id!r}, running={self.running})"
