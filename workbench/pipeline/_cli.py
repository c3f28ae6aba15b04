"""``workbench app analytics|anomaly-sink|scoring``: run a streaming app in this process (main thread)."""

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
    parser.add_argument("--closing-strategy", choices=("partition", "key"), default="partition")
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


def _refuse_bad_credentials(settings: Any) -> None:
    """Stop at once, naming the setting, when the broker rejects the password or certificate (the Quix
    clients would retry a rejected login forever); a broker that is merely down is waited for as before."""
    from workbench.broker import BrokerAuthenticationError, BrokerUnavailableError, wait_for_broker

    try:
        wait_for_broker(settings, timeout=5.0)
    except BrokerAuthenticationError:
        raise
    except BrokerUnavailableError:
        pass


def _run(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args
    from workbench.pipeline._imports import skip_unused_imports

    skip_unused_imports()  # before quixstreams is imported (start-up time)

    settings = settings_from_args(args)
    _refuse_bad_credentials(settings)
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
