"""``workbench generate`` and ``workbench validate``: thin wrappers over the data API."""

from __future__ import annotations

import argparse
import sys

from workbench.data.generator import generate
from workbench.data.schema import validate

__all__ = ["register"]


def _generate(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args

    out = args.out
    if out is None:
        out = settings_from_args(args).data_dir / f"redset_{args.days}d_{args.instances}i_s{args.seed}.parquet"
    summary = generate(
        out,
        days=args.days,
        instances=args.instances,
        seed=args.seed,
        start=args.start,
        anomaly_rate=args.anomaly_rate,
        rows_per_day=args.rows_per_day,
        progress=not args.no_progress and sys.stderr.isatty(),
        kinds=args.kinds,
    )
    print(summary)
    return 0


def _validate(args: argparse.Namespace) -> int:
    print(f"OK {validate(args.file)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` and ``validate`` sub-commands."""
    gen = subparsers.add_parser(
        "generate",
        help="write a synthetic Redset-like query log with labelled anomalies",
        description="Write a synthetic, Redset-like query log (Parquet) with labelled anomalies.",
    )
    gen.add_argument("--out", help="Parquet file to write (default: <home>/data/redset_<D>d_<N>i_s<S>.parquet)")
    gen.add_argument("--days", type=int, default=4, help="number of days (default 4)")
    gen.add_argument("--instances", type=int, default=16, help="number of instances (default 16)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    gen.add_argument("--rows-per-day", type=int, default=None,
                     help="average queries per day over the fleet (default 500000)")
    gen.add_argument("--anomaly-rate", type=float, default=0.002,
                     help="share of labelled anomalous queries (default 0.002)")
    gen.add_argument("--start", default="2024-03-04", help="first day, YYYY-MM-DD (default 2024-03-04)")
    gen.add_argument("--kinds", default="classic",
                     help="anomaly kinds: 'classic' (default, 4 kinds), 'all' (the 13-kind stress pack, "
                          "window labels in <out>.windows.parquet) or comma-separated names")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    val = subparsers.add_parser(
        "validate",
        help="check that a Parquet query log has the Redset columns and is sorted",
        description="Check a Parquet query log: readable, non-empty, Redset columns and types, "
        "sorted by (arrival_timestamp, query_id).",
    )
    val.add_argument("file", help="the Parquet query log")
    val.set_defaults(func=_validate)
