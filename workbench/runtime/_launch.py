"""Run one process of the supervisor's spec: ``python -m workbench.runtime._launch --home H --name N``.

The supervisor starts every process through this module with the process's name; the options
come from the typed :class:`~workbench.runtime.supervisor.ProcessSpec` in ``<home>/run/spec.json``
and go straight to the Python API (``run_scoring(settings, **options)``, ``Replay(**options)``),
never through a command line. A new kind of process is one entry in :data:`LAUNCHERS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench._lifeline import bind_to_supervisor
from workbench.config import Settings, get_settings
from workbench.exceptions import WorkbenchError

__all__ = ["APP_RUNNERS", "LAUNCHERS", "main"]

logger = logging.getLogger(__name__)

#: App name -> "module:function" of its runner (``runner(settings, **options)``).
APP_RUNNERS: dict[str, str] = {
    "analytics": "workbench.pipeline.analytics:run_analytics",
    "anomaly-sink": "workbench.pipeline.anomaly_sink:run_anomaly_sink",
    "scoring": "workbench.pipeline.scoring:run_scoring",
}


#: An app whose consumer group dropped it (EX_TEMPFAIL: its supervisor restarts it).
EXIT_LOST_PARTITIONS = 75


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_app(settings: Settings, name: str, options: dict[str, Any]) -> int:
    app = options.pop("app", name)
    if app not in APP_RUNNERS:
        msg = f"Unknown app {app!r} in the process spec; known apps: {sorted(APP_RUNNERS)}."
        raise SystemExit(msg)
    from workbench.pipeline._imports import skip_unused_imports

    skip_unused_imports()  # before quixstreams is imported (start-up time)
    try:
        _resolve(APP_RUNNERS[app])(settings, **options)
    except Exception as exc:
        from workbench.pipeline._app import coordinator_away, refused_commit

        refusal = refused_commit(exc)
        if refusal is None:
            raise
        # Not a fault of the app or of a message. One line, as the status shows it, not a traceback.
        if coordinator_away(refusal):
            why = (f"its consumer group's coordinator (a broker) was away or moving ({refusal.str()}: a broker "
                   "stopped, restarted or lost leadership)")
        else:  # a process stopped or starved (an overloaded machine, a debugger, SIGSTOP), or the coordinator gone
            why = (f"Kafka's consumer group dropped it after no heartbeat for session.timeout.ms="
                   f"{settings.session_timeout_ms} (the process was stopped or starved that long, or "
                   f"its group coordinator broker was unreachable that long: {refusal.str()})")
        print(f"workbench: error: {app} lost its partitions: {why}, so its commit was refused. It exits to be "
              "restarted from its last committed offsets: nothing is lost or counted twice.", flush=True)
        return EXIT_LOST_PARTITIONS
    return 0


def _run_replay(settings: Settings, _name: str, options: dict[str, Any]) -> int:
    from workbench.replay import Replay

    # The supervisor provisions (and restarts) the managed broker: no second starter here.
    timeout = options.pop("timeout", None)
    replay = Replay(settings=settings, **options)
    # SIGTERM/SIGINT ask for a clean stop: the current batch commits, the position is saved.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: replay.stop())
    status = replay.run(timeout=timeout)
    print(status, flush=True)
    return 0 if status.state in ("finished", "stopped") else 1


#: Process kind -> launcher(settings, name, options) returning the exit code.
LAUNCHERS: dict[str, Callable[[Settings, str, dict[str, Any]], int]] = {
    "app": _run_app,
    "replay": _run_replay,
}


def main(argv: list[str] | None = None) -> int:
    """Find process ``--name`` in ``<home>/run/spec.json`` and run it in this process."""
    bind_to_supervisor()
    from workbench._memory import prefer_jemalloc_for_arrow

    prefer_jemalloc_for_arrow()
    from workbench.runtime.supervisor import read_spec

    parser = argparse.ArgumentParser(description="Run one supervised workbench process.")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--restarted", action="store_true", help="use the spec's restart options")
    args = parser.parse_args(argv)
    # milliseconds: the logs of N processes (and their trainings) are merged into one timeline to trace waits
    logging.basicConfig(level=logging.INFO, format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("quixstreams", "kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    specs = {spec.name: spec for spec in read_spec(args.home).processes}
    if args.name not in specs:
        msg = f"No process {args.name!r} in {args.home / 'run' / 'spec.json'} (it has {sorted(specs)})."
        raise SystemExit(msg)
    spec = specs[args.name]
    try:
        settings = get_settings(home=args.home)
        return LAUNCHERS[spec.kind](settings, spec.name, spec.options_for(restarted=args.restarted))
    except WorkbenchError as exc:
        # as the `workbench` command says it: the supervisor shows this line in the status
        print(f"workbench: error: {exc}", flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
