"""``workbench models|train|evaluate``: thin wrappers over the ML API."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from workbench import defaults
from workbench.config import Settings
from workbench.ml.registry import ModelRegistry

__all__ = ["register"]


def _settings(args: argparse.Namespace) -> Settings:
    from workbench.cli import settings_from_args

    return settings_from_args(args)


def _pr_auc(meta: dict) -> str:
    for record in reversed(meta.get("evaluations", [])):
        if record.get("detector") == "residual":
            return f"{record['metrics']['PR-AUC']:.3f}@{record['day']}"
    return "-"


def _list(args: argparse.Namespace) -> int:
    registry = ModelRegistry(_settings(args).models_dir)
    current = registry.current()
    versions = registry.versions()
    if not versions:
        print("no model versions (train one: workbench train --day YYYY-MM-DD)")
        return 0
    print(f"  {'version':<18} {'day':<10} {'rows':>8} {'train_s':>8}  PR-AUC")
    for version in versions:
        meta = registry.info(version)
        marker = "*" if version == current else " "
        print(f"{marker} {version:<18} {meta['training_day']:<10} {meta['rows']['trained']:>8} "
              f"{meta['training_seconds']:>8.1f}  {_pr_auc(meta)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = ModelRegistry(_settings(args).models_dir)
    meta = registry.info(registry.resolve(args.version))
    if not args.full:
        meta.pop("features", None)
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = ModelRegistry(_settings(args).models_dir)
    previous = registry.current()
    registry.set_current(args.version)
    print(f"current: {args.version} (was {previous})")
    return 0


def _prune(args: argparse.Namespace) -> int:
    removed = ModelRegistry(_settings(args).models_dir).prune(args.keep)
    print(f"deleted {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from workbench.ml._train import train_day

    result = train_day(_settings(args), args.day, window_days=args.window_days, max_rows=args.max_rows,
                       seed=args.seed, data=args.data)
    meta = result.meta
    print(f"{result.version}: {result.rows} rows in {result.seconds:.1f} s, parity max|diff| "
          f"{meta['parity_max_abs_diff']:.2g}, holdout {json.dumps(meta['holdout_metrics'])}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from workbench.ml.alert_report import alert_report, format_alert_report, has_labels
    from workbench.ml.evaluate import evaluate, format_table

    if not has_labels(args.data):  # a real (unlabelled) log: alert volume, reasons and scores instead
        print(format_alert_report(alert_report(_settings(args), args.day, args.version, data=args.data)))
        return 0

    result = evaluate(_settings(args), args.day, args.version, data=args.data, store=not args.no_store)
    print(f"day {result['day']}  version {result['version']}  detector {result['detector']}")
    print(format_table(result["metrics"]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` (list/show/rollback/set-current/prune), ``train`` and ``evaluate``."""
    models = subparsers.add_parser("models", help="list, inspect and roll back model versions")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="one line per version (* = current)")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="model.json of a version (default: current)")
    p.add_argument("version", nargs="?", default="current")
    p.add_argument("--full", action="store_true", help="include the feature state")
    p.set_defaults(func=_show)
    for name in ("rollback", "set-current"):
        p = sub.add_parser(name, help="make VERSION current (atomic pointer swap)")
        p.add_argument("version")
        p.set_defaults(func=_rollback)
    p = sub.add_parser("prune", help="delete all but the newest versions (the current one always stays)")
    p.add_argument("--keep", type=int, required=True, help="how many of the newest versions to keep")
    p.set_defaults(func=_prune)

    train = subparsers.add_parser("train", help="train, check and register a model for one day")
    train.add_argument("--day", required=True, type=dt.date.fromisoformat, help="last day of the window")
    train.add_argument("--window-days", type=int, default=defaults.TRAIN_WINDOW_DAYS, help="days in the window")
    train.add_argument("--max-rows", type=int, default=defaults.TRAIN_MAX_ROWS, help="row cap")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", type=Path, help="train from a Parquet log instead of the shards")
    train.set_defaults(func=_train)

    ev = subparsers.add_parser("evaluate", help="score a labelled day and print detection metrics")
    ev.add_argument("--day", required=True, type=dt.date.fromisoformat)
    ev.add_argument("--version", default="current", help="a version id, 'current' or 'baseline'")
    ev.add_argument("--data", required=True, type=Path,
                    help="Parquet log (file or prepared folder); without labels: alerts, reasons, scores per instance")
    ev.add_argument("--no-store", action="store_true", help="do not record the result with the version")
    ev.set_defaults(func=_evaluate)
