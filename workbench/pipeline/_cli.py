"""``workbench app analytics|anomaly-sink|scoring``: run a streaming app in this process (main thread);
``workbench dead-letters``: what the apps refused, and why."""

from __future__ import annotations

import argparse
from typing import Any

from workbench import defaults

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``app`` command."""
    parser = subparsers.add_parser("app", help="run a streaming app (stream analytics, the anomaly sink or ML scoring)")
    parser.add_argument("name", choices=("analytics", "anomaly-sink", "scoring"), help="which app")
    parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    parser.add_argument("--idle-exit", type=float, help="stop after this many seconds without messages")
    parser.add_argument("--window-minutes", type=float, default=defaults.ANALYTICS_WINDOW_MINUTES,
                        help="analytics window length")
    parser.add_argument("--grace-minutes", type=float, default=defaults.ANALYTICS_GRACE_MINUTES,
                        help="analytics grace period (event time)")
    parser.add_argument("--closing-strategy", choices=("partition", "key"), default="partition",
                        help="analytics: close windows by the partition's event time or each key's")
    parser.add_argument("--retention-days", type=float, default=defaults.ANALYTICS_RETENTION_DAYS,
                        help="archive older analytics windows")
    parser.add_argument("--batch-rows", type=int, default=defaults.SCORING_BATCH_ROWS,
                        help="scoring: rows per partition batch")
    parser.add_argument("--batch-seconds", type=float, default=defaults.SCORING_BATCH_SECONDS,
                        help="scoring: longest time between flushes")
    parser.add_argument("--every-n-days", type=int, default=defaults.TRAIN_EVERY_N_DAYS,
                        help="scoring: train every N-th finished day")
    parser.add_argument("--window-days", type=int, default=defaults.TRAIN_WINDOW_DAYS,
                        help="scoring: training window in days")
    parser.add_argument("--no-train", action="store_true", help="scoring: never schedule training")
    parser.set_defaults(func=_run)

    letters = subparsers.add_parser(
        "dead-letters", help="what the apps and the replay dead-lettered: counts by app and reason, the newest ones",
        description="Reads the dead-letter topic to its end: counts by app and reason code, then the newest dead "
                    "letters with the source message's topic[partition]@offset, the reason, and the start of the "
                    "value kept.")
    letters.add_argument("--last", type=_positive, default=10, help="how many of the newest to show (default 10)")
    letters.add_argument("--app", choices=("analytics", "scoring", "anomaly-sink", "replay"), help="only this app's")
    letters.add_argument("--code", help="only this reason code (e.g. invalid_json, event_time_out_of_range)")
    letters.add_argument("--json", action="store_true", help="one JSON object per dead letter shown, no summary")
    letters.set_defaults(func=_dead_letters)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a positive whole number, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _dead_letters(args: argparse.Namespace) -> int:
    """Print the dead letters' counts by app and reason code, then the newest ``--last``."""
    import orjson
    import pyarrow.compute as pc

    from workbench.broker import wait_for_broker
    from workbench.cli import settings_from_args
    from workbench.pipeline._deadletter import read_dead_letters

    settings = settings_from_args(args)
    wait_for_broker(settings, timeout=10.0)
    table = read_dead_letters(settings, timeout=120.0)
    if args.app:
        table = table.filter(pc.equal(table["app"], args.app))
    if args.code:
        table = table.filter(pc.equal(table["code"], args.code))
    shown = table.slice(max(0, table.num_rows - args.last))
    if args.json:
        for row in shown.to_pylist():
            value = row.pop("value") or b""
            row["value_start"] = value[:200].decode("utf-8", errors="backslashreplace")
            row["written_at"] = row["written_at"].isoformat()
            print(orjson.dumps(row).decode())
        return 0
    which = " ".join(f"{k}={v}" for k, v in (("app", args.app), ("code", args.code)) if v)
    print(f"{table.num_rows:,} dead letters on {settings.topic_dead_letter}" + (f" ({which})" if which else ""))
    if not table.num_rows:
        return 0
    counts = table.group_by(["app", "code"]).aggregate([("reason", "count")]).sort_by(
        [("reason_count", "descending"), ("app", "ascending"), ("code", "ascending")])
    for app, code, count in zip(*(counts[c].to_pylist() for c in ("app", "code", "reason_count")), strict=True):
        print(f"  {count:>10,}  {app or '?':<13} {code or '(no reason)'}")
    print(f"newest {shown.num_rows}:")
    for row in shown.to_pylist():
        source = (f"{row['source_topic']}[{row['source_partition']}]@{row['source_offset']}"
                  if row["source_topic"] or not row["source_file"] else f"{row['source_file']} row {row['source_row']}")
        value = (row["value"] or b"")[:60].decode("utf-8", errors="backslashreplace")
        size = f"{row['value_bytes']:,} B" + (", truncated" if row["truncated"] else "")
        print(f"  {row['written_at']:%Y-%m-%d %H:%M:%S}  {row['app'] or '?'}  {source}\n"
              f"      {row['reason'][:300]}\n      value ({size}): {value!r}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args
    from workbench.pipeline._imports import skip_unused_imports

    skip_unused_imports()  # before quixstreams is imported (start-up time)
    from workbench.broker import raise_if_login_refused

    settings = settings_from_args(args)
    # Quix's clients would retry a refused password or certificate forever; a broker merely down is
    # waited for by the app as before. 5 s: a SCRAM handshake with a broker just started needs more than 3.
    raise_if_login_refused(settings, timeout=5.0)
    if args.name == "analytics":
        from workbench.pipeline.analytics import run_analytics

        run_analytics(settings, timeout=args.timeout, idle_exit=args.idle_exit,
                      window_ms=int(args.window_minutes * 60_000), grace_ms=int(args.grace_minutes * 60_000),
                      closing_strategy=args.closing_strategy, retention_days=args.retention_days)
    elif args.name == "scoring":
        from workbench.pipeline.scoring import run_scoring

        run_scoring(settings, timeout=args.timeout, idle_exit=args.idle_exit, batch_rows=args.batch_rows,
                    batch_seconds=args.batch_seconds, every_n_days=args.every_n_days, window_days=args.window_days,
                    train=not args.no_train)
    else:
        from workbench.pipeline.anomaly_sink import run_anomaly_sink

        run_anomaly_sink(settings, timeout=args.timeout, idle_exit=args.idle_exit)
    return 0
