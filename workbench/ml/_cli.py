"""``workbench models|train|evaluate``: thin wrappers over the ML API."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import defaults
from workbench.cli import instance_ids, settings_from_args

if TYPE_CHECKING:
    from workbench.ml.registry import ModelRegistry

__all__ = ["register"]


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from workbench.ml.registry import ModelRegistry

    return ModelRegistry(settings_from_args(args).models_dir)


def _pr_auc(meta: dict) -> str:
    """The newest out-of-sample evaluation's PR-AUC (an evaluation on a day of the version's own window
    read like one: 0.994@2024-03-05 beside 0.980@2024-03-07)."""
    own = set(meta.get("window_days") or [meta.get("training_day")])
    for record in reversed(meta.get("evaluations", [])):
        if record.get("detector") == "residual" and record.get("day") not in own:
            return f"{record['metrics']['PR-AUC']:.3f}@{record['day']}"
    return "-"


def _list(args: argparse.Namespace) -> int:
    from workbench.ml.exceptions import MLError

    registry = _registry(args)
    current, pinned = registry.current(), registry.pinned()
    versions = registry.versions()
    if not versions:
        print("no model versions (train one: workbench train --day YYYY-MM-DD)")
        return 0
    print(f"  {'version':<18} {'day':<10} {'rows':>8} {'train_s':>8}  PR-AUC (out of sample)")
    for version in versions:
        marker = "*" if version == current else " "
        try:
            meta = registry.info(version)
            line = (f"{marker} {version:<18} {meta['training_day']:<10} {meta['rows']['trained']:>8} "
                    f"{meta['training_seconds']:>8.1f}  {_pr_auc(meta)}")
        except (MLError, OSError, ValueError, KeyError, TypeError) as exc:  # damaged: say so, list the others
            why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            print(f"{marker} {version:<18} damaged model.json ({why}); it is skipped when scoring")
            continue
        print(line)
    if pinned:
        print(f"* = current; pinned by a person ({pinned} scores every event; `workbench models set-current auto` "
              "lets each day's version score it again)")
    else:
        print("* = current (each event is scored by the version trained on the days before it)")
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    meta = registry.info(registry.resolve(args.version))
    if not args.full:
        meta.pop("features", None)
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    previous = registry.current()
    now = registry.set_current(args.version, reason=args.reason or "")
    how = "event-time selection (no pin)" if args.version == "auto" else "pinned: scores every event from now on"
    print(f"current: {now} (was {previous}); {how}")
    return 0


def _history(args: argparse.Namespace) -> int:
    records = _registry(args).history()
    if not records:
        print("no changes of the current model recorded")
    for r in records[-args.last:] if args.last > 0 else records:
        pin = " (pinned)" if r.get("pinned") else ""
        print(f"{r['at']}  {r['actor']:<10} {r['from'] or '-'} -> {r['to']}{pin}"
              f"{'  ' + r['reason'] if r.get('reason') else ''}")
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from workbench.ml.rescore import rescore

    instances = [i for ids in args.instances for i in ids] if args.instances else None  # "3,17 42" too
    result = rescore(settings_from_args(args), args.version, start=args.start, end=args.end, instances=instances)
    skipped = f", {len(result.skipped_days)} day(s) done earlier" if result.skipped_days else ""
    print(f"{result.version}: {len(result.days)} day(s), {result.rows} rows scored, {result.anomalies} anomalies, "
          f"{result.inserted} new in the lakehouse{skipped}")
    if not result.rows and not result.skipped_days:  # an instance or a span the shards do not hold read as done
        from workbench.store.shards import list_days

        try:
            days = list_days(settings_from_args(args).shards_dir)
        except (FileNotFoundError, OSError):
            days = []
        held = f"the shards hold {days[0]} to {days[-1]}" if days else "the shards hold no day yet"
        print(f"note: no stored row matches the selection ({held}; `workbench report` or notebook 04 name the "
              "instances); nothing was scored", file=sys.stderr)
    return 0


def _prune(args: argparse.Namespace) -> int:
    removed = _registry(args).prune(args.keep)
    print(f"deleted {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from workbench.ml._train import train_day

    settings = settings_from_args(args)
    if args.waiting:
        return _train_waiting(settings)
    if _running_registry(settings) == settings.models_dir:
        # Its scoring app trains each day once the stream has passed it; a version trained now from the
        # shards took part of a day, became current and scored the rest of the replay (439 anomalies
        # where the undisturbed run found 310).
        print(f"workbench: error: a workbench runs under {settings.home}, and its scoring app trains each day "
              "once the stream has passed it; a version trained now could see part of a day and would score the "
              "rest of the replay. Stop it first (`workbench stop`), or train into another registry "
              "(WORKBENCH_MODELS_DIR).", file=sys.stderr)
        return 2
    last = _last_day(settings, args.data)
    if last is not None and args.day > last:
        # the window would hold only earlier days: a version named after a day it never saw, made current
        print(f"workbench: error: --day {args.day} is after the last day with events ({last}) in "
              f"{args.data or settings.shards_dir}; train a day from the log (the version scores the day after it)",
              file=sys.stderr)
        return 2
    result = train_day(settings, args.day, window_days=args.window_days, max_rows=args.max_rows,
                       seed=args.seed, data=args.data)
    meta = result.meta
    rows = meta.get("rows") or {}
    # "400000 rows" beside `models list`'s 351,514 trained: the window's rows read, of which some are held out
    split = (f" ({rows['trained']:,} fitted, {rows['holdout']:,} held out)"
             if isinstance(rows.get("trained"), int) and isinstance(rows.get("holdout"), int) else "")
    print(f"{result.version}: {result.rows:,} rows of the window{split} in {result.seconds:.1f} s, parity max|diff| "
          f"{meta['parity_max_abs_diff']:.2g}, holdout {json.dumps(meta['holdout_metrics'])}")
    return 0


def _train_waiting(settings: Any) -> int:
    """``train --waiting``: the days the running workbench's scoring app waits for, trained now."""
    from workbench.runtime import Workbench, WorkbenchStateError

    try:
        wb = Workbench.attach(settings)
    except WorkbenchStateError as exc:
        print(f"workbench: error: --waiting trains the days a running workbench waits for, and none runs ({exc}). "
              "With the workbench stopped, train a day with --day D.", file=sys.stderr)
        return 2
    versions = wb.train_waiting_days()
    print(f"trained {', '.join(versions)}: the scoring app scores the days that waited for them"
          if versions else "no day waits for a model that no training is scheduled for")
    return 0


def _running_registry(settings: Any) -> Any:
    """The model registry of the workbench running under the home, or None when none runs."""
    from workbench.runtime import Workbench, WorkbenchStateError

    try:
        return Workbench.attach(settings).settings.models_dir
    except WorkbenchStateError:
        return None


#: The smallest row cap a training takes: below it the holdout that calibrates the detector is a handful of rows.
_MIN_TRAIN_ROWS = 1_000


def _at_least(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer >= ``low`` (and <= ``high``; argparse prints the usage and this line
    otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f">= {low:,}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value:,}")
        return value
    return parse


def _last_day(settings: Any, data: Any) -> dt.date | None:
    """The UTC day of the last event of the log ``data`` (or of the shards), None when unknown."""
    if data is not None:
        from workbench.replay._source import LogFile

        try:
            last_us = LogFile(data).last_time_us()
        except Exception:  # train_day names what is wrong with the log
            return None
        return None if last_us is None else dt.datetime.fromtimestamp(last_us / 1e6, tz=dt.UTC).date()
    from workbench.store.shards import list_days

    try:
        days = list_days(settings.shards_dir)
    except OSError:
        return None
    return days[-1] if days else None


def _evaluate(args: argparse.Namespace) -> int:
    from workbench.ml.alert_report import alert_report, format_alert_report, has_labels
    from workbench.ml.evaluate import evaluate, format_table
    from workbench.ml.exceptions import UnlabelledDay

    if not has_labels(args.data):  # a real (unlabelled) log: alert volume, reasons and scores instead
        print(format_alert_report(alert_report(settings_from_args(args), args.day, args.version, data=args.data)))
        return 0

    window_kinds = [k.strip() for k in (args.window_kinds or "").split(",") if k.strip()]
    try:
        result = evaluate(settings_from_args(args), args.day, args.version, data=args.data,
                          store=not args.no_store, window_kinds=window_kinds, details=args.details)
    except UnlabelledDay as exc:  # a labelled log's unlabelled day: its alerts, not a table against no labels
        print(f"{exc}\n")
        print(format_alert_report(alert_report(settings_from_args(args), args.day, args.version, data=args.data)))
        return 0
    print(f"day {result['day']}  version {result['version']}  detector {result['detector']}")
    print(format_table(result["metrics"]))
    if any(key.startswith("recall@baseline volume") for key in result["metrics"]):
        print(f"recall@baseline volume[K]: the detector's recall of kind K when it raises only as many alerts as the "
              f"baseline ({result['metrics'].get('baseline alerts', 0):,.0f}); the baseline's own per-kind recall at "
              "that volume: --version baseline")
        if any(key.startswith("recall@baseline volume, alone") for key in result["metrics"]):
            print("recall@baseline volume, alone[K]: the same with kind K's rows and the normal rows only, as many "
                  "alerts as the baseline raises on them (other kinds scoring higher do not fill the top k)")
    if result["detector"] == "baseline" and "windows flagged" in result["metrics"]:
        print("window recall: the baseline's rules judge single queries and flag no window; the detector's window "
              "figures: evaluate without --version baseline")
    if "window precision" in result["metrics"]:
        print("window precision: labelled windows flagged over windows flagged, leaving out the flagged windows that "
              "hold a labelled per-query anomaly and no window label (explained by it: on neither side; "
              "'windows explained[K]': those of them that hold kind K's rows)")
    if "details" in result:
        print(f"details: every query's verdict in {result['details']['queries']}, the flagged windows (verdict "
              f"labelled, explained or false) in {result['details']['windows']}")
    from workbench.analysis.detection_summary import trained_on

    # notebook 03 says so (the same rule); the CLI printed 0.994 as if out of sample. The baseline's rules
    # run on a version's predictions, so its figures are in-sample on that version's days too.
    if trained_on(settings_from_args(args), result["day"], [result["version"]]):
        whose = "the baseline's predictions (and the regression figures)" if result["detector"] == "baseline" \
            else "the detector"
        print(f"note: {result['day']} is in {result['version']}'s training window: in-sample figures flatter "
              f"{whose} (`models list` shows out-of-sample evaluations only); evaluate a later day")
    return 0


def _day(text: str) -> dt.date:
    """A ``--day`` argument: an ISO day, with the format named when it is not one."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        msg = f"{text!r} is not a day: write it as YYYY-MM-DD (e.g. 2024-03-07), a UTC day"
        raise argparse.ArgumentTypeError(msg) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` (list/show/rollback/set-current/history/prune), ``train``, ``rescore`` and ``evaluate``."""
    models = subparsers.add_parser("models", help="list, inspect and roll back model versions")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="one line per version (* = current)")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="model.json of a version (default: current)")
    p.add_argument("version", nargs="?", default="current")
    p.add_argument("--full", action="store_true", help="include the feature state")
    p.set_defaults(func=_show)
    for name, what in (("rollback", "go back to an earlier VERSION and pin it"), ("set-current", "pin VERSION")):
        p = sub.add_parser(name, help=f"{what}: it scores every event from now on ('auto': event-time "
                                      "selection again); recorded in the registry history")
        p.add_argument("version", help="a version id, or 'auto' to remove the pin")
        p.add_argument("--reason", help="why (kept in the history)")
        p.set_defaults(func=_rollback)
    p = sub.add_parser("history", help="every change of the current model (time, actor, from, to)")
    p.add_argument("--last", type=int, default=20, help="the newest N changes (0: every change)")
    p.set_defaults(func=_history)
    p = sub.add_parser("prune", help="delete all but the newest versions (the current one always stays)")
    p.add_argument("--keep", type=int, required=True, help="how many of the newest versions to keep")
    p.set_defaults(func=_prune)

    train = subparsers.add_parser("train", help="train, check and register a model for one day")
    which = train.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", type=_day, help="last day of the window, YYYY-MM-DD")
    which.add_argument("--waiting", action="store_true",
                       help="train now the days a running workbench's scoring app waits for (a log that ended "
                            "before a later day passed them), as Workbench.train_waiting_days()")
    train.add_argument("--window-days", type=_at_least(1), default=defaults.TRAIN_WINDOW_DAYS,
                       help=f"days in the window, ending with --day (default {defaults.TRAIN_WINDOW_DAYS})")
    train.add_argument("--max-rows", type=_at_least(_MIN_TRAIN_ROWS), default=defaults.TRAIN_MAX_ROWS,
                       help=f"rows the regressors train on, a uniform sample of a larger window (default "
                            f"{defaults.TRAIN_MAX_ROWS:,}; at least {_MIN_TRAIN_ROWS:,}: the fit and its holdout need "
                            "rows)")
    train.add_argument("--seed", type=_at_least(0, defaults.TRAIN_MAX_SEED), default=0,
                       help="seed of that sample and of the models: same seed, same version (default 0)")
    train.add_argument("--data", type=Path, help="train from a Parquet log instead of the shards")
    train.set_defaults(func=_train)

    rs = subparsers.add_parser("rescore", help="score stored shards with one model version; its anomalies go to "
                                               "the lakehouse next to the others (idempotent, resumable)")
    rs.add_argument("--version", required=True, help="a version id or 'current'")
    rs.add_argument("--start", help="event time (ISO, UTC) from which to rescore (default: first shard day)")
    rs.add_argument("--end", help="event time (ISO, UTC, exclusive) up to which to rescore (default: all)")
    rs.add_argument("--instances", type=instance_ids, nargs="+",
                    help="only these instance ids, e.g. 3,17,42 (or 3 17 42)")
    rs.set_defaults(func=_rescore)

    ev = subparsers.add_parser("evaluate", help="score a labelled day and print detection metrics")
    ev.add_argument("--day", required=True, type=_day,
                    help="the labelled day to score, YYYY-MM-DD (a day after the version's window: out of sample)")
    ev.add_argument("--version", default="current", help="a version id, 'current' or 'baseline'")
    ev.add_argument("--data", required=True, type=Path,
                    help="Parquet log (file or prepared folder); without labels: alerts, reasons, scores per instance")
    ev.add_argument("--no-store", action="store_true", help="do not record the result with the version")
    ev.add_argument("--details", type=Path, metavar="DIR",
                    help="write the day's verdicts to DIR: queries.parquet (every query: label, score, the "
                         "detector's alert, the deferred step's reason, evidence) and windows.parquet (every "
                         "flagged window and signal: labelled, explained by labelled queries, or false)")
    ev.add_argument("--window-kinds", metavar="KIND,...",
                    help="labelled kinds that are anomalous only together (judged per 10-minute window: a window "
                         "holding at least 10 of its rows; the generator's collective kinds and those of a "
                         "LOG.windows.parquet sidecar always are)")
    ev.set_defaults(func=_evaluate)
