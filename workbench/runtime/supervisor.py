"""The supervisor: one small daemon per WORKBENCH_HOME that runs the workbench's processes.

It starts each process in the spec (``<home>/run/spec.json``), sends its output to
``<home>/logs/<name>.log``, restarts a process that dies with exponential backoff (1 s, 2 s, ...
30 s), and leaves a process that exits with code 0 finished (a replay that reached the end).
Every half second it writes ``<home>/run/state.json`` atomically. SIGTERM or SIGINT stops all
children (SIGTERM, then SIGKILL after a grace period) and then the supervisor itself.

Run as ``python -m workbench.runtime.supervisor --home HOME``; :class:`workbench.Workbench` does this.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workbench._fs import write_atomic

__all__ = ["ProcessSpec", "Supervisor", "read_state", "run_dir", "write_json_atomic"]

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def run_dir(home: Path) -> Path:
    """Where the supervisor keeps its spec, state and pid."""
    return home / "run"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that readers never see a partial file."""
    write_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2), fsync=False)


def read_state(home: Path) -> dict[str, Any] | None:
    """The supervisor's latest state, or None when it never ran here."""
    try:
        return orjson.loads((run_dir(home) / "state.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


@dataclass
class ProcessSpec:
    """One supervised process.

    ``restart_argv`` (optional) replaces ``argv`` on restarts: the replay is started with
    ``--reset`` once but must resume, not start over, after a crash.
    """

    name: str
    argv: list[str]
    restart_argv: list[str] | None = None
    restart: bool = True


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


class Supervisor:
    """Keeps the processes of one workbench running until told to stop."""

    def __init__(self, home: Path, specs: list[ProcessSpec], *, env: dict[str, str] | None = None,
                 grace_seconds: float = 20.0) -> None:
        self.home = home
        self.children = [_Child(spec) for spec in specs]
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.grace_seconds = grace_seconds
        self._stopping = False

    def stop(self, *_: object) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stopping = True

    def _start(self, child: _Child) -> None:
        argv = child.spec.restart_argv if child.restarts and child.spec.restart_argv else child.spec.argv
        log_path = self.home / "logs" / f"{child.spec.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            child.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                cwd=self.home,
            )
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

    def _write_state(self, state: str) -> None:
        write_json_atomic(run_dir(self.home) / "state.json", {
            "supervisor_pid": os.getpid(),
            "state": state,
            "updated_at": time.time(),
            "processes": {
                child.spec.name: {
                    "pid": child.process.pid if child.process is not None else None,
                    "state": child.state,
                    "restarts": child.restarts,
                    "exit_code": child.exit_code,
                    "started_at": child.started_at,
                    "log": str(self.home / "logs" / f"{child.spec.name}.log"),
                }
                for child in self.children
            },
        })

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

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return 0."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        (run_dir(self.home) / "supervisor.pid").write_text(str(os.getpid()))
        try:
            while not self._stopping:
                now = time.monotonic()
                for child in self.children:
                    self._check(child, now)
                self._write_state("running")
                time.sleep(0.5)
            self._write_state("stopping")
            self._terminate_all()
        finally:
            self._write_state("stopped")
            (run_dir(self.home) / "supervisor.pid").unlink(missing_ok=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: read ``<home>/run/spec.json`` and supervise."""
    parser = argparse.ArgumentParser(description="Supervise the workbench's background processes.")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = orjson.loads((run_dir(args.home) / "spec.json").read_bytes())
    specs = [ProcessSpec(**item) for item in spec["processes"]]
    return Supervisor(args.home, specs, env=spec.get("env"), grace_seconds=spec.get("grace_seconds", 20.0)).run()


def spec_dict(specs: list[ProcessSpec], env: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The JSON spec the supervisor reads."""
    return {"processes": [asdict(s) for s in specs], "env": env, **extra}


if __name__ == "__main__":
    sys.exit(main())
