"""``workbench report``: run the analysis notebooks into an offline HTML report."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _report(args: argparse.Namespace) -> int:
    from workbench.cli import settings_from_args
    from workbench.reports import ALL, run_report

    params = {key: value for key, value in (("start", args.start), ("end", args.end), ("instances", args.instances),
                                            ("versions", args.versions), ("day", args.day)) if value}
    out = run_report(settings_from_args(args), run_id=args.run_id, params=params,
                     notebooks=args.notebooks.split(",") if args.notebooks else ALL, data=args.data,
                     progress=not args.no_progress and sys.stderr.isatty(), show_code=args.show_code)
    print(out / "index.html")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    rep = subparsers.add_parser(
        "report",
        help="run the analysis notebooks into an offline HTML report",
        description="Execute the notebooks (papermill) into <reports_dir>/<run-id>/ as executed notebooks and "
                    "self-contained HTML, and print the path of the report's index.html.",
    )
    rep.add_argument("--run-id", help="report folder name (default: UTC time, e.g. 20240305T120000Z)")
    rep.add_argument("--start", help="start of the time range, ISO-8601 UTC (default: all data)")
    rep.add_argument("--end", help="end of the time range (exclusive), ISO-8601 UTC (default: all data)")
    rep.add_argument("--instances", help="instance ids, comma-separated (default: all)")
    rep.add_argument("--versions", help="model versions, comma-separated (default: all)")
    rep.add_argument("--day", help="UTC day for the model evaluation, YYYY-MM-DD (default: last day of --data)")
    rep.add_argument("--data", help="labelled Parquet log for label agreement and model evaluation "
                                    "(default: the log the home replayed when labelled, else the newest labelled log "
                                    "in <home>/data)")
    from workbench.reports.pages import ALL

    rep.add_argument("--notebooks", help=f"comma-separated notebook names (default: all, {','.join(ALL)})")
    rep.add_argument("--show-code", action="store_true",
                     help="keep the notebooks' code cells in the HTML pages (default: narrative and results only)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(func=_report)
