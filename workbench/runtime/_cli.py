"""``workbench demo``, ``workbench start``, ``workbench stop`` and ``workbench status``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from workbench import defaults
from workbench.cli import settings_from_args

if TYPE_CHECKING:
    from workbench.config import Settings

__all__ = ["register"]


def _demo(args: argparse.Namespace) -> int:
    from workbench.runtime._demo import run_demo

    result = run_demo(settings_from_args(args), days=args.days, instances=args.instances, seed=args.seed,
                      pack=args.pack, report=not args.no_report, progress=not args.quiet)
    print(result.summary())
    return 0


def parse_app_instances(text: str) -> int | dict[str, int]:
    """``--app-instances``: ``N`` for every app, or ``scoring=2,analytics=3`` per app."""
    try:
        if "=" not in text:
            return int(text)
        pairs = [(name.strip(), int(count)) for name, count in (item.split("=", 1) for item in text.split(","))]
    except ValueError:
        msg = f"--app-instances takes N or APP=N,APP=N (e.g. scoring=2,analytics=2). Got {text!r} instead."
        raise argparse.ArgumentTypeError(msg) from None
    names = [name for name, _ in pairs]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        msg = f"--app-instances names {', '.join(twice)} more than once in {text!r}: give each app one count."
        raise argparse.ArgumentTypeError(msg)
    return dict(pairs)


def _start(args: argparse.Namespace) -> int:
    from workbench.runtime import Workbench

    workbench = Workbench.start(data=args.data, speedup=args.speedup, pack=args.pack, settings=settings_from_args(args),
                                reset=not args.resume, retrain_every_days=args.every_n_days,
                                app_instances=args.app_instances, skip_bad_rows=args.skip_bad_rows,
                                fresh=args.fresh)
    print(f"started: {workbench}; logs in {workbench.settings.logs_dir}")
    if args.data:
        print("steer it with `workbench replay-control ...`, watch it with `workbench status`, "
              "end it with `workbench stop`")
    else:  # only the apps: nothing to steer until a replay runs
        print("the apps wait for events: replay a log into them with `workbench replay LOG`; watch with "
              "`workbench status`, end with `workbench stop`")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from workbench.runtime import Workbench, WorkbenchStateError
    from workbench.runtime._workbench import wait_for_start

    settings = settings_from_args(args)
    if not wait_for_start(settings.home, on_wait=lambda: print(f"a start under {settings.home} is in progress: "
                                                                "waiting for it, then stopping it")):
        print(f"workbench: error: a start under {settings.home} has held its start lock for minutes; "
              "see its logs, then run `workbench stop` again", file=sys.stderr)
        return 2
    try:
        workbench = Workbench.attach(settings)
    except WorkbenchStateError as exc:
        from workbench.runtime._workbench import leftover_kafka

        # No live supervisor; its children may still run (it was killed): find them by their home tag.
        orphans = Workbench.stop_orphans(settings)
        left = leftover_kafka(settings)
        if left is not None and (args.kafka or left[1]):
            # a killed workbench's broker (or one asked for): `stop` said "nothing runs" and left it
            from workbench.broker import LocalKafka

            LocalKafka(settings).stop()
            print(f"stopped the local Kafka of {settings.home} (pid {left[0]})"
                  + ("" if args.kafka else ", which a workbench that no longer runs had started"))
        demo = _stop_killed_demo(settings)
        if orphans:
            print(f"stopped {orphans} orphaned process(es) of {settings.home}")
        elif demo:
            print(demo)
        elif left is None or not (args.kafka or left[1]):
            print(exc)
        return 0
    workbench.stop(kafka=True if args.kafka else None)
    print("stopped")
    return 0


def _stop_killed_demo(settings: Settings) -> str:
    """Stop the workbench a killed `workbench demo` left under ``<home>/demo`` (what was stopped, or "").

    A demo runs in a home of its own, so `stop` on the home said "No workbench runs" beside it.
    """
    from workbench.runtime import Workbench, WorkbenchStateError
    from workbench.runtime._demo import DEMO_MARKER

    home = settings.home / "demo"
    if not (home / DEMO_MARKER).is_file():
        return ""
    demo = settings.with_overrides(home=home)
    try:
        Workbench.attach(demo).stop(kafka=True)
    except WorkbenchStateError:
        if not Workbench.stop_orphans(demo):
            return ""
    return f"stopped the workbench a `workbench demo` left running under {home}"


def _status(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from workbench.replay import ReplayError
    from workbench.runtime import Workbench

    workbench = Workbench.attach(settings_from_args(args))
    while True:
        try:
            print(workbench.status())
        except (ReplayError, KafkaException) as exc:
            # Said "Is the workbench running (`workbench status`)?" to the user of `workbench status`.
            print(_broker_silent(workbench, exc), file=sys.stderr)
            if not args.watch:
                return 2
        if not args.watch:
            return 0
        time.sleep(args.watch)
        print()


def _broker_silent(workbench: object, error: Exception | None = None) -> str:
    """What `status` says when the workbench runs but its broker does not answer (``error``: the read's)."""
    from workbench.runtime._format import format_bytes
    from workbench.runtime.supervisor import read_state

    settings = workbench.settings  # type: ignore[attr-defined]
    state = read_state(settings.home) or {}
    processes = state.get("processes") or {}
    states = ", ".join(f"{name} {entry.get('state')}" for name, entry in sorted(processes.items())) or "none yet"
    trouble = state.get("broker") or {}
    if not settings.manages_kafka:  # a cluster: say what failed, not "its broker" of a list of three
        return (f"workbench: the workbench under {settings.home} runs (processes: {states}), but its Kafka cluster "
                f"(KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}) did not serve the replay state"
                + (f": {str(error).split(': ', 1)[-1]}" if error is not None else ""))
    elif trouble.get("restart_failures"):
        # a full disk, say: the broker dies at every start, and "try again in a few seconds" never came true
        free = trouble.get("free_bytes")
        space = (f"; its data folder {trouble.get('data_dir')} has {format_bytes(free)} free"
                 if isinstance(free, int) else "")
        restarts = (f": the supervisor failed to start it again {trouble['restart_failures']} time(s), last: "
                    f"{trouble.get('error')}{space} (see logs/kafka.log in the home; it retries)")
    else:
        from workbench.broker import LocalKafka

        pid = LocalKafka(settings).pid()
        restarts = (f" although its process {pid} runs: stopped (SIGSTOP), swapping or overloaded; see "
                    "logs/kafka.log in the home" if pid is not None else
                    " (the supervisor restarts the managed broker when it dies: try again in a few seconds)")
    return (f"workbench: the workbench under {settings.home} runs (processes: {states}), but its Kafka broker at "
            f"{settings.bootstrap_servers} does not answer{restarts}")


def _positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime commands."""
    demo = subparsers.add_parser("demo", help="everything end to end on generated data, then stop")
    demo.add_argument("--days", type=int, default=4, help="days of generated log (default 4)")
    demo.add_argument("--instances", type=int, default=16, help="Redshift instances in it (default 16)")
    demo.add_argument("--seed", type=int, default=0, help="the generator's seed: the same numbers out (default 0)")
    demo.add_argument("--pack", type=int, default=100, help="queries per Kafka message (1 = JSON per query)")
    demo.add_argument("--no-report", action="store_true", help="skip the papermill reports")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    start = subparsers.add_parser("start", help="start Kafka, the pipeline apps and a replay in the background")
    start.add_argument("--data", help="Parquet query log (or folder) to replay; without it only Kafka and the apps "
                                      "start, and they wait for events")
    start.add_argument("--speedup", default=f"{defaults.REPLAY_SPEEDUP:g}",
                       help=f"event seconds per wall second, or 'max' (default {defaults.REPLAY_SPEEDUP:g})")
    start.add_argument("--pack", type=int, default=defaults.REPLAY_PACK,
                       help=f"most queries per Kafka message (default {defaults.REPLAY_PACK}; 1: JSON, one each)")
    start.add_argument("--resume", action="store_true",
                       help="continue from the replay's saved position (default: the log starts again at its first "
                            "row; rows sent before are counted once)")
    start.add_argument("--every-n-days", type=int, default=defaults.TRAIN_EVERY_N_DAYS,
                       help=f"train a new model version every N event days (default {defaults.TRAIN_EVERY_N_DAYS})")
    start.add_argument("--app-instances", type=parse_app_instances, default=1, metavar="N|APP=N,...",
                       help="processes per app on this home (Kafka spreads the partitions; one scoring "
                            "instance trains), e.g. 2 or scoring=2,analytics=2")
    start.add_argument("--skip-bad-rows", action="store_true",
                       help="replay a log with row problems: bad rows go to the dead-letter topic with their reason")
    start.add_argument("--fresh", action="store_true",
                       help="clear the home's results of earlier runs first (shards, window stats, lakehouse, "
                            "models, state, the local broker's data); needed to replay another log into a used home")
    start.set_defaults(func=_start)

    stop = subparsers.add_parser("stop", help="stop the running workbench (and the Kafka it started)")
    stop.add_argument("--kafka", action="store_true", help="also stop a managed Kafka it did not start")
    stop.set_defaults(func=_stop)

    status = subparsers.add_parser("status", help="one status snapshot of the running workbench")
    status.add_argument("--watch", type=_positive_seconds, metavar="SECONDS", help="repeat every SECONDS")
    status.set_defaults(func=_status)
