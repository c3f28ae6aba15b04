"""The supervisor: one small daemon per WORKBENCH_HOME that runs the workbench's processes.

It starts each process of the spec (``<home>/run/spec.json``, a list of typed
:class:`ProcessSpec`) as ``python -m workbench.runtime._launch --name NAME``, writes its output
to ``<home>/logs/<name>.log`` (rotated: :data:`~workbench.defaults.LOG_MAX_BYTES`, a few old files
kept), restarts a process that dies with exponential backoff (1 s, 2 s, ... 30 s), and leaves a
process that exits with code 0 finished (a replay that reached the end). ``<home>/run/state.json``
is rewritten atomically when something changes (and every few seconds as a heartbeat). SIGTERM or
SIGINT stops all children (SIGTERM, then SIGKILL after a grace period), then any other process
tagged with this home (the training subprocess), then the supervisor itself.

Faults: children are bound to the supervisor (:mod:`workbench._lifeline`: parent-death signal
plus a watchdog), so ``kill -9`` of the supervisor stops them too; pids are stored with their
start time, so a reused pid is never taken for ours; every file is created owner-only (umask 077);
stale temporary files of atomic writes are removed at start.

Run as ``python -m workbench.runtime.supervisor --home HOME``; :class:`workbench.Workbench` does this.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from workbench import defaults
from workbench._fs import process_start_time, remove_stale_temp_files, same_process, write_atomic, write_pid_file
from workbench._lifeline import home_processes, stop_processes, tags, unblock_stop_signals
from workbench.config import Settings, get_settings

__all__ = [
    "OWNER_ONLY_UMASK",
    "ProcessSpec",
    "RunSpec",
    "Supervisor",
    "read_spec",
    "read_state",
    "replay_started_at",
    "run_dir",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
HEARTBEAT_S = 5.0
BROKER_CHECK_S = 2.0
#: Files the workbench creates are readable by their owner only.
OWNER_ONLY_UMASK = 0o077


def run_dir(home: Path) -> Path:
    """Where the supervisor keeps its spec, state and pid."""
    return home / "run"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that readers never see a partial file."""
    write_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2), fsync=False)


def _free_bytes(folder: Path) -> int | None:
    """Bytes free where ``folder`` lives (None when it cannot be told): a full disk kills the broker at each start."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def read_state(home: Path) -> dict[str, Any] | None:
    """The supervisor's latest state, or None when it never ran here."""
    try:
        return orjson.loads((run_dir(home) / "state.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


@dataclass
class ProcessSpec:
    """One supervised process, typed: which launcher runs it and with which keyword options.

    ``kind`` names an entry of :data:`workbench.runtime._launch.LAUNCHERS` (``app``: the app called
    ``name``; ``replay``). ``options`` are keyword arguments of the Python API it calls;
    ``restart_options`` (optional) are merged over them on restarts: the replay starts with
    ``reset=True`` once but must resume, not start over, after a crash.
    """

    name: str
    kind: Literal["app", "replay"]
    options: dict[str, Any] = field(default_factory=dict)
    restart_options: dict[str, Any] | None = None
    restart: bool = True

    def options_for(self, *, restarted: bool) -> dict[str, Any]:
        """The keyword options of a first start or of a restart."""
        if restarted and self.restart_options:
            return {**self.options, **self.restart_options}
        return dict(self.options)


@dataclass
class RunSpec:
    """What ``<home>/run/spec.json`` holds: the processes and how the workbench was started.

    ``env`` holds the settings as environment variables without secrets; ``secret_env`` names
    the variables (e.g. ``KAFKA_SASL_PASSWORD``) that the supervisor gets from its own environment.
    """

    processes: list[ProcessSpec]
    env: dict[str, str]
    secret_env: list[str] = field(default_factory=list)
    started_kafka: bool = False
    replay_id: str = "default"
    apps: list[str] = field(default_factory=list)
    grace_seconds: float = 20.0

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON-ready data (what ``spec.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        """A spec from ``spec.json`` data (unknown keys of newer versions are ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "processes"}
        return cls(processes=[ProcessSpec(**p) for p in data.get("processes", [])], **known)


def read_spec(home: Path) -> RunSpec:
    """The spec the supervisor of ``home`` runs."""
    return RunSpec.from_json(orjson.loads((run_dir(home) / "spec.json").read_bytes()))


def replay_started_at(home: Path, replay_id: str) -> float | None:
    """When (Unix time) the live workbench under ``home`` last started its replay process for ``replay_id``;
    None when no live supervisor there runs one.

    The replay status in Kafka outlives its replay: a status published before this moment is a
    previous run's (or a crashed process's), not the replay now starting.
    """
    state = read_state(home)
    if not state or state.get("state") != "running" or not same_process(state.get("supervisor_pid"),
                                                                          state.get("supervisor_started")):
        return None
    try:
        if read_spec(home).replay_id != replay_id:
            return None
    except (OSError, orjson.JSONDecodeError):
        return None
    replay = (state.get("processes") or {}).get("replay") or {}
    return replay.get("started_at") if replay.get("state") in ("running", "starting") else None


#: How the ``workbench`` command prints a WorkbenchError before it exits (workbench.cli.main).
_ERROR_PREFIX = "workbench: error: "


class _RotatingOutput:
    """Copies a child's stdout/stderr pipe, line by line, into a size-rotated log file."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=defaults.LOG_MAX_BYTES, backupCount=defaults.LOG_BACKUPS, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        #: The child's last "workbench: error: ..." line (a mistake it explained before exiting), for the status.
        self.last_error: str | None = None

    def line(self, text: str) -> None:
        record = logging.LogRecord("child", logging.INFO, "", 0, text, None, None)
        with self._lock:
            self.handler.emit(record)

    def pump(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                if text.startswith(_ERROR_PREFIX):
                    self.last_error = text[len(_ERROR_PREFIX):][:500]
                self.line(text)
        stream.close()

    def close(self) -> None:
        self.handler.close()


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen | None = None
    restarts: int = 0
    state: str = "pending"  # pending | running | backoff | finished | failed | stopped
    exit_code: int | None = None
    next_start: float = 0.0
    started_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    output: _RotatingOutput | None = None
    #: The error line of the exit that made it restart (kept while the restarted process runs).
    exit_error: str | None = None


class Supervisor:
    """Keeps the processes of one workbench running until told to stop."""

    def __init__(self, home: Path, specs: list[ProcessSpec], *, env: dict[str, str] | None = None,
                 grace_seconds: float = 20.0, broker: Settings | None = None) -> None:
        self.home = home
        self.broker = broker
        self.children = [_Child(spec) for spec in specs]
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.grace_seconds = grace_seconds
        self._stopping = False
        #: The managed broker failing to restart: how often, the last error, the disk space of its data.
        self._broker_trouble: dict[str, Any] | None = None
        self._last_state: bytes | None = None
        self._last_write = 0.0

    def stop(self, *_: object) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stopping = True

    def _log_path(self, child: _Child) -> Path:
        return self.home / "logs" / f"{child.spec.name}.log"

    def _start(self, child: _Child) -> None:
        argv = [sys.executable, "-m", "workbench.runtime._launch", "--home", str(self.home),
                "--name", child.spec.name]
        if child.restarts:
            argv.append("--restarted")
        log_path = self._log_path(child)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if child.output is None:
            child.output = _RotatingOutput(log_path)
        child.exit_error = child.output.last_error if child.restarts else None
        child.output.last_error = None
        child.output.line(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {child.spec.name} "
                          f"({child.spec.kind}, options {child.spec.options_for(restarted=bool(child.restarts))})")
        env = {**self.env, **tags(self.home, child.spec.kind, supervisor_pid=os.getpid(), direct_child=True)}
        child.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=self.home, umask=OWNER_ONLY_UMASK,
        )
        threading.Thread(target=child.output.pump, args=(child.process.stdout,), daemon=True,
                         name=f"log-{child.spec.name}").start()
        child.state = "running"
        child.started_at = time.time()
        child.exit_code = None
        logger.info("started %s (pid %d)", child.spec.name, child.process.pid)

    def _check(self, child: _Child, now: float) -> None:
        if child.state in ("pending", "backoff") and now >= child.next_start:
            self._start(child)
            return
        if child.state != "running" or child.process is None:
            return
        code = child.process.poll()
        if code is None:
            return
        child.exit_code = code
        child.history.append({"exit_code": code, "at": time.time()})
        if code == 0 or not child.spec.restart:
            child.state = "finished" if code == 0 else "failed"
            logger.info("%s exited with code %d", child.spec.name, code)
            return
        delay = min(MAX_BACKOFF_S, 2.0**child.restarts)
        child.restarts += 1
        child.state = "backoff"
        child.next_start = now + delay
        logger.warning("%s died with code %d; restart %d in %.0f s", child.spec.name, code, child.restarts, delay)

    def _write_state(self, state: str, *, force: bool = False) -> None:
        body = {
            "supervisor_pid": os.getpid(),
            "supervisor_started": process_start_time(os.getpid()),
            "state": state,
            "processes": {
                child.spec.name: {
                    "pid": child.process.pid if child.process is not None else None,
                    "pid_started": (process_start_time(child.process.pid)
                                    if child.process is not None and child.state == "running" else None),
                    "state": child.state,
                    "restarts": child.restarts,
                    "exit_code": child.exit_code,
                    "started_at": child.started_at,
                    "log": str(self._log_path(child)),
                    "error": (child.output.last_error if child.output is not None
                              and child.state in ("backoff", "failed") else None),
                    "exit_error": child.exit_error if child.state == "running" else None,
                }
                for child in self.children
            },
        }
        if self._broker_trouble is not None:
            body["broker"] = dict(self._broker_trouble)
        encoded = orjson.dumps(body)
        now = time.monotonic()
        # Written on change, plus a heartbeat: not twice a second for nothing.
        if not force and encoded == self._last_state and now - self._last_write < HEARTBEAT_S:
            return
        self._last_state, self._last_write = encoded, now
        write_json_atomic(run_dir(self.home) / "state.json", {**body, "updated_at": time.time()})

    def _terminate_all(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", child.spec.name, self.grace_seconds)
                child.process.kill()  # type: ignore[union-attr]
                child.process.wait(10)  # type: ignore[union-attr]
            child.exit_code = child.process.returncode  # type: ignore[union-attr]
            if child.state == "running":
                child.state = "stopped"
        # Grandchildren (the training subprocess) and anything else of this home.
        leftovers = home_processes(self.home)
        if leftovers:
            logger.info("stopping %d more process(es) of this home: %s", len(leftovers),
                        ", ".join(str(p.pid) for p in leftovers))
            stop_processes(leftovers, timeout=self.grace_seconds)
        for child in self.children:
            if child.output is not None:
                child.output.close()

    def _watch_broker(self) -> None:
        """Restart the managed Kafka when it dies (the apps and the replay reconnect by themselves)."""
        from workbench.broker import LocalKafka, ensure_broker

        assert self.broker is not None
        kafka = LocalKafka(self.broker)
        if kafka.pid() is None:
            # Not this home's broker (e.g. one shared by several homes on the same port): not ours to restart.
            logger.info("the broker at %s was not started from this home; not watching it",
                        self.broker.bootstrap_servers)
            return
        while not self._stopping:
            time.sleep(BROKER_CHECK_S)
            if self._stopping or kafka.pid() is not None:
                continue
            logger.warning("the managed Kafka is not running; restarting it")
            try:
                ensure_broker(self.broker, topics=False)
            except Exception as exc:
                logger.error("restarting Kafka failed (will retry): %s", exc)
                failures = 1 + (self._broker_trouble or {}).get("restart_failures", 0)
                self._broker_trouble = {"restart_failures": failures, "error": str(exc)[:300], "at": time.time(),
                                        "data_dir": str(self.broker.kafka_dir / "data"),
                                        "free_bytes": _free_bytes(self.broker.kafka_dir / "data")}
            else:
                self._broker_trouble = None

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return 0."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        unblock_stop_signals()  # and its children inherit the unblocked mask
        os.umask(OWNER_ONLY_UMASK)
        removed = remove_stale_temp_files(self.home, skip=("kafka",))
        if removed:
            logger.info("removed %d stale temporary file(s) of interrupted writes", removed)
        write_pid_file(run_dir(self.home) / "supervisor.pid", os.getpid())
        if self.broker is not None and self.broker.manages_kafka:
            threading.Thread(target=self._watch_broker, name="broker-watch", daemon=True).start()
        try:
            while not self._stopping:
                now = time.monotonic()
                for child in self.children:
                    self._check(child, now)
                self._write_state("running")
                time.sleep(0.5)
            self._write_state("stopping", force=True)
            self._terminate_all()
        finally:
            self._write_state("stopped", force=True)
            (run_dir(self.home) / "supervisor.pid").unlink(missing_ok=True)
        return 0


def _configure_logging(home: Path) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(logs / "supervisor.log", maxBytes=defaults.LOG_MAX_BYTES,
                                                   backupCount=defaults.LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    """Entry point: read ``<home>/run/spec.json`` and supervise."""
    parser = argparse.ArgumentParser(description="Supervise the workbench's background processes.")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    os.umask(OWNER_ONLY_UMASK)
    _configure_logging(args.home)
    spec = read_spec(args.home)
    missing = [name for name in spec.secret_env if name not in os.environ]
    if missing:
        logger.warning("secret(s) %s are not in the supervisor's environment; the apps will lack them", missing)
    broker = get_settings(home=args.home) if spec.started_kafka or "KAFKA_BOOTSTRAP_SERVERS" not in spec.env else None
    return Supervisor(args.home, spec.processes, env=spec.env, grace_seconds=spec.grace_seconds,
                      broker=broker).run()


if __name__ == "__main__":
    sys.exit(main())
