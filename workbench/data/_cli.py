"""``workbench generate``, ``validate``, ``prepare`` and ``profile``: thin wrappers over the data API."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from workbench.cli import InstanceIdsThenSources

__all__ = ["register"]


def _generate(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args
    from workbench.data.generator import generate

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
    """Each log named, one after the other (each a log of its own, as a replay reads it); 1 if any has problems."""
    if len(args.file) == 1:  # one log: its error is the command's (one line, exit 2)
        return _validate_log(args, Path(args.file[0]).expanduser())
    from workbench.data.exceptions import DataValidationError

    codes = []
    for file in args.file:  # several: one that cannot be read is said, and the others are still checked
        try:
            codes.append(_validate_log(args, Path(file).expanduser()))
        except DataValidationError as exc:
            print(f"workbench: error: {exc}", file=sys.stderr)
            codes.append(2)
    return max(codes)


def _validate_log(args: argparse.Namespace, path: Path) -> int:
    """Print one line per row problem (at most LINES_PER_COLUMN per column) and a verdict; 1 if any.

    A folder is checked as the replay reads it: each of its files, then the order across them.
    """
    from workbench.data.validation import check

    if not path.is_dir():
        report = check(path)
        for line in report.lines():
            print(line)
        print(report.verdict())
        _note_event_time_range(args, path, [report])
        if report.ok:
            _note_reused_query_ids(args, [path])
            _note_window_labels(path, [report])
        return 0 if report.ok else 1
    from workbench.replay._source import check_order_across_files, log_parts

    reports = [check(part) for part in log_parts(path)]
    for report in reports:
        for line in report.lines():
            print(f"{report.path.name}: {line}")
        print(report.verdict())
    if not all(report.ok for report in reports):
        return 1
    check_order_across_files(path)
    print(f"OK {path}: {len(reports)} files, {sum(r.rows for r in reports):,} queries, in order across files")
    _note_event_time_range(args, path, reports)
    _note_reused_query_ids(args, [report.path for report in reports])
    _note_window_labels(path, reports)
    return 0


def _note_window_labels(path: Path, reports: list) -> None:
    """The log's window-label file, when it has one, read as ``evaluate`` reads it (a sidecar of another shape
    was read as windows that match nothing); its error is the command's, windows outside the log a warning."""
    from workbench.data.generator import window_labels, window_labels_path

    side = window_labels_path(path)
    if not side.exists():
        return
    labels = window_labels(path)
    kinds = sorted({k for k in labels.column("kind").to_pylist() if k is not None})
    print(f"OK {side}: {labels.num_rows:,} labelled windows" + (f" of {', '.join(kinds)}" if kinds else ""))
    times = [t for r in reports for t in (r.first_arrival, r.last_arrival) if t is not None]
    if times and labels.num_rows:
        first = dt.datetime.combine(min(times).date(), dt.time(), dt.UTC)
        end = dt.datetime.combine(max(times).date() + dt.timedelta(days=1), dt.time(), dt.UTC)
        starts = labels.column("window_start").to_pylist()
        outside = sum(not first <= start < end for start in starts)
        if outside:
            print(f"warning: {outside:,} of the {len(starts):,} labelled windows of {side} lie outside the log's days "
                  f"({first:%Y-%m-%d} to {end - dt.timedelta(days=1):%Y-%m-%d}): no evaluation judges them",
                  file=sys.stderr)


def _note_reused_query_ids(args: argparse.Namespace, paths: list[Path]) -> None:
    """A query id that comes again at another arrival time gets a warning (the stores would count it apart)."""
    import tempfile

    from workbench.data.validation import reused_query_ids

    try:  # the system's temp folder (TMPDIR): validating must not create a home
        count, first = reused_query_ids(paths, temp_dir=Path(tempfile.gettempdir()))
    except Exception as exc:  # a check DuckDB cannot run (types it cannot unite) must not fail a valid log
        logging.getLogger(__name__).warning("could not look for query ids reused at another arrival: %s", exc)
        return
    if count:
        shown = "; ".join(f"instance_id {i}, query_id {q}: {n} arrivals from {a:%Y-%m-%d %H:%M:%S} to "
                          f"{b:%Y-%m-%d %H:%M:%S}" for i, q, n, a, b in first)
        many = (f"{count:,} queries (instance_id, query_id) come" if count > 1
                else "a query (instance_id, query_id) comes")
        print(f"warning: {many} at more than one arrival time, e.g. {shown}. "
              "A query_id is unique per instance: the shards keep one row of each (the latest sent) while the "
              "windows count every arrival. If they are one query exported twice, keep one row.", file=sys.stderr)


def _note_event_time_range(args: argparse.Namespace, path: Path, reports: list) -> None:
    """A valid log the apps would still dead-letter (dated outside their event-time range) gets a warning."""
    from workbench.cli import settings_from_args
    from workbench.pipeline._eventtime import log_span_outside

    times = [t for r in reports for t in (r.first_arrival, r.last_arrival) if t is not None]
    outside = log_span_outside(settings_from_args(args), min(times), max(times), path) if times else None
    if outside:
        print(f"warning: {outside[1]}", file=sys.stderr)


def _prepare(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args
    from workbench.data.prepare import prepare

    sources = [*args.sources, *getattr(args, "sources_after_instances", [])]
    if not sources:
        print("workbench prepare: error: name at least one SRC (a Parquet file, folder or glob); a source named "
              "like a number after --instances is read as an instance id: write it as ./NAME", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    summary = prepare(
        sources, args.out, instances=args.instances, start=args.start, end=args.end,
        sample_instances=args.sample_instances, seed=args.seed, split=args.split,
        memory_limit=args.memory_limit, threads=args.threads, row_group_size=args.row_group_size,
        temp_dir=settings.home / "tmp", progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(summary)
    if summary.first_arrival is not None and summary.last_arrival is not None:
        from workbench.pipeline._eventtime import log_span_outside

        # as validate warns: a log the apps would dead-letter whole is better known before a replay
        outside = log_span_outside(settings, summary.first_arrival, summary.last_arrival, args.out)
        if outside:
            print(f"warning: {outside[1]}", file=sys.stderr)
    if summary.rows_out == 0:  # a log of no rows, which validate and the replay refuse: not written
        print("no rows left to write, so nothing was written (an earlier output of the same name is kept): "
              "check the filters and the rejected-rows sample", file=sys.stderr)
        return 1
    return 0


def _profile(args: argparse.Namespace) -> int:
    from workbench.data.profile import profile

    report = profile(args.file, tier=args.tier)
    print(report)
    return 0 if report.all_in_range or not args.strict else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate``, ``validate``, ``prepare`` and ``profile`` sub-commands."""
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
                          "window labels beside it: x.parquet gets x.windows.parquet) or comma-separated names")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    val = subparsers.add_parser(
        "validate",
        help="check every row and column of a Parquet query log before replaying it",
        description="Check a Parquet query log: readable, non-empty, Redset columns and types, every value "
        "(NULLs in required columns, negative durations/sizes/counts, ids beyond int64, NaN, floats too large "
        "to be exact, times no consumer can decode, non-UTF-8 text, undecodable pages) and the order by "
        "(arrival_timestamp, query_id). "
        "Prints one line per problem (the first 10 per column; all are counted) and exits 1 if any.",
    )
    val.add_argument("file", nargs="+", help="the Parquet query log, or a folder of them (as `prepare --split day` "
                     "writes); several are checked one after the other, each as a log of its own")
    val.set_defaults(func=_validate)

    prep = subparsers.add_parser(
        "prepare",
        help="turn Redset files, folders or globs into one sorted log that replays",
        usage="%(prog)s SRC [SRC ...] --out OUT [--split day] [--instances IDS [IDS ...]] [options]",
        description="Map columns case-insensitively, coerce types (integral floats and numeric strings to int64, "
        "naive timestamps of any unit as UTC, 0/1 and t/f booleans), drop and count rows that cannot be repaired "
        "(sample in OUT.rejected.jsonl), filter, and sort by (arrival_timestamp, query_id) out of core with DuckDB. "
        "Same inputs and options give byte-identical output.",
    )
    # "*" and a check in _prepare: --instances takes several ids, and sources after them
    prep.add_argument("sources", nargs="*", metavar="SRC", help="Parquet files, folders (Redset's parts/) or globs")
    prep.add_argument("--out", required=True, help="Parquet file to write (with --split day: a folder)")
    prep.add_argument("--split", choices=["day"], help="one file per UTC day in the folder OUT")
    prep.add_argument("--instances", nargs="+", action=InstanceIdsThenSources, metavar="IDS",
                      help="keep only these instance ids, e.g. 3,17,42 or 3 17 42")
    prep.add_argument("--start", help="keep arrivals at or after this ISO date/time (UTC)")
    prep.add_argument("--end", help="keep arrivals before this ISO date/time (UTC)")
    prep.add_argument("--sample-instances", type=int, metavar="N", help="keep N randomly chosen instances")
    prep.add_argument("--seed", type=int, default=0, help="seed of --sample-instances (default 0)")
    prep.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit; the sort spills beyond it (1GB)")
    prep.add_argument("--threads", type=int, help="DuckDB threads (default: one per core)")
    prep.add_argument("--row-group-size", type=int, default=131_072, help="rows per row group (default 131072)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bars")
    prep.set_defaults(func=_prepare)

    prof = subparsers.add_parser(
        "profile",
        help="compare a query log with the published Redset aggregates",
        description="Query-type mix, cache hits, runtime and scan quantiles, queueing, fingerprint repetition and "
        "arrivals by hour of a log, each against the range published for Redset, marked in or out of range.",
    )
    prof.add_argument("file", help="Parquet query log (file or folder)")
    prof.add_argument("--tier", choices=["auto", "provisioned", "serverless"], default="auto",
                      help="which published figures to compare with (auto: by the share of NULL cluster_size)")
    prof.add_argument("--strict", action="store_true", help="exit 1 when any aggregate is out of range")
    prof.set_defaults(func=_profile)
