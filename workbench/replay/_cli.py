"""``workbench replay FILE`` and ``workbench replay-control COMMAND``."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING

from workbench import defaults
from workbench.cli import settings_from_args

if TYPE_CHECKING:
    from workbench.replay._control import ReplayStatus

__all__ = ["register"]


def _replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workbench.broker import ensure_broker
    from workbench.replay._replay import Replay
    from workbench.replay._source import check_log_columns

    settings = settings_from_args(args)
    # The arguments and the file first: a typo should not wait out the broker's start-up deadline.
    replay = Replay(args.file, settings=settings, speedup=args.speedup, pack=args.pack, encoding=args.encoding,
                    replay_id=args.replay_id, reset=args.reset, batch_size=args.batch_size,
                    skip_bad_rows=args.skip_bad_rows, linger=args.linger, run_token=args.run_token,
                    commands_since=args.commands_since)
    check_log_columns(replay.data)
    replay.check_rows()  # every row before the broker: a bad row should not wait for a broker to start
    ensure_broker(settings)
    bars: list[tqdm] = []  # made at the first progress: a log the replay refuses shows no empty bar first

    def progress(status: ReplayStatus) -> None:
        if not bars:
            bars.append(tqdm(total=0, unit="rows", unit_scale=True, dynamic_ncols=True, disable=args.quiet,
                             file=sys.stderr))
        bar = bars[0]
        if bar.total != status.rows_total:
            bar.total = status.rows_total
        bar.n = status.next_row
        clock = status.event_time.strftime("%Y-%m-%d %H:%M:%S") if status.event_time else "-"
        speed = "max" if status.speedup <= 0 else f"{status.speedup:g}x"
        eta = f"{status.eta_seconds:.0f}s" if status.eta_seconds is not None else "-"
        bar.set_description_str(f"{clock} UTC {speed} {status.state}", refresh=False)
        bar.set_postfix_str(f"{status.rate_now:,.0f}/s ETA {eta}", refresh=False)
        bar.refresh()

    # SIGTERM/SIGINT ask for a clean stop: the current batch commits, the position is saved.
    stopped_by: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        replay.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        status = replay.run(timeout=args.timeout, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(status)
    if stopped_by:  # the shell's convention, 128 + the signal (it said 0, as if the log had been replayed)
        return 128 + stopped_by[0]
    return 0 if status.state in ("finished", "stopped") else 1


def _control(args: argparse.Namespace) -> int:
    from workbench.replay._control import ReplayController

    if args.action in ("speed", "seek") and args.value is None:
        print(f"workbench: error: {args.action} needs a value: "
              + ("a speedup such as 600, 0.5 or max" if args.action == "speed" else "an ISO date-time such as "
                 "2024-03-05T12:00 (UTC)"), file=sys.stderr)
        return 2
    if args.action not in ("speed", "seek") and args.value is not None:
        print(f"workbench: error: {args.action} takes no value. Got {args.value!r}.", file=sys.stderr)
        return 2
    from workbench.runtime import Workbench, WorkbenchStateError

    settings = settings_from_args(args)
    # The broker of the workbench running under this home, whatever the environment says: with a
    # stale WORKBENCH_KAFKA_PORT it read and paused another home's replay while `status` showed this one's.
    with contextlib.suppress(WorkbenchStateError):
        settings = Workbench.attach(settings).settings
    if settings.manages_kafka:
        from workbench.broker import LocalKafka

        if LocalKafka(settings).pid() is None:
            # the default port may answer anyway, with another home's broker and replay: never steer that one
            print(f"workbench: error: the local Kafka of {settings.home} is not running, so no replay of this home "
                  f"can be controlled (another home's broker may answer on {settings.bootstrap_servers}). Start one "
                  "with `workbench start --data LOG` or `workbench replay LOG`, or set WORKBENCH_HOME to its home.",
                  file=sys.stderr)
            return 2
    controller = ReplayController(settings, args.replay_id)
    if args.action == "status":
        from workbench.runtime.supervisor import replay_started_at

        status = controller.status()
        started = replay_started_at(settings.home, args.replay_id)
        if status is not None and started is not None and status.updated_at < started:
            # after a crash and a fresh start the record is the dead run's until the new replay reports
            print(f"replay {args.replay_id!r}: starting (its process started {time.time() - started:,.0f} s ago "
                  f"and has not reported yet). The last status, from before it started: {status}")
            return 0
        print(status if status else f"replay {args.replay_id!r} has not run yet")
        if status is not None and status.notice:  # the panel shows it; the terminal did not
            print(f"last command ignored: {status.notice}")
        silent = status.silence() if status else None
        if silent is not None:
            print(f"(this status is {silent:,.0f} s old, and an active replay reports every second: "
                  "it has stopped, or it cannot reach Kafka)")
        return 0 if status else 1
    status = controller.status()
    if status is None:
        # Sent anyway: a replay of that id starting now takes commands sent since its start. A typo
        # went unnoticed ("sent speed to replay 'nope'").
        print(f"warning: no replay named {args.replay_id!r} has reported on {settings.bootstrap_servers}; "
              "the command waits for one of that id (the workbench's replay is 'default')", file=sys.stderr)
    if args.action == "speed":
        controller.set_speed(args.value)
    elif args.action == "seek":
        controller.seek(args.value)
    else:
        getattr(controller, args.action)()
    print(f"sent {args.action} to replay {args.replay_id!r}" + _seek_note(args, status))
    return 0


def _seek_note(args: argparse.Namespace, status: ReplayStatus | None) -> str:
    """What a seek before the log's first event does (the panel says it too)."""
    from workbench.replay._control import _parse_time, seek_before_start

    if args.action != "seek" or status is None:
        return ""
    note = seek_before_start(_parse_time(args.value), status.first_event_time)
    return f": {note}" if note else ""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the replay commands."""
    parser = subparsers.add_parser("replay", help="replay a Parquet query log into Kafka")
    parser.add_argument("file", help="Parquet query log sorted by (arrival_timestamp, query_id), or a folder "
                        "of them replayed in name order (workbench prepare --split day)")
    parser.add_argument("--speedup", default=f"{defaults.REPLAY_SPEEDUP:g}",
                        help="event seconds per wall second, 0 or 'max' = unpaced")
    parser.add_argument("--pack", type=int, default=None,
                        help=f"most queries of one instance per message (default {defaults.REPLAY_PACK}; "
                             "1 with --encoding json)")
    parser.add_argument("--encoding", default=None,
                        help=f"message encoding: {defaults.REPLAY_ENCODING} (default: packed Arrow IPC, fastest), "
                             "arrow-zstd, json (1 query per message, for other Kafka tools); "
                             "with only --pack: json for 1, arrow above")
    parser.add_argument("--reset", action="store_true", help="start from the first row, not the saved position")
    parser.add_argument("--replay-id", default="default", help="names the position, status and commands")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"most rows per transaction (default {defaults.REPLAY_BATCH_SIZE:,}, at most "
                             f"{defaults.REPLAY_BATCH_MESSAGES:,} messages)")
    parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="replay a file with row problems: bad rows go to the dead-letter topic with their reason")
    parser.add_argument("--linger", action="store_true",
                        help="after the last row keep listening for seek/reset (as under the workbench)")
    parser.add_argument("--run-token",
                        help="names this run across restarts: with --reset, a restart of the same run resumes "
                        "from its own saved position instead of resetting again")
    parser.add_argument("--commands-since", type=float,
                        help="apply control commands sent since this Unix time (default: process start)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_replay)

    control = subparsers.add_parser("replay-control", help="steer a running replay from any process")
    control.add_argument("action", choices=["speed", "pause", "resume", "seek", "reset", "stop", "status"])
    control.add_argument("value", nargs="?", help="speedup for 'speed', ISO date-time for 'seek'")
    control.add_argument("--replay-id", default="default", help="the replay to steer (its --replay-id)")
    control.set_defaults(func=_control)
