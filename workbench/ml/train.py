"""``python -m workbench.ml.train --day YYYY-MM-DD [--home H]``: train one day in its own process.

Logs go to ``<logs_dir>/train_<day>.log`` (appended per attempt) and stderr. Exit code 0 means a
version was registered and made current; anything else leaves the previous version current.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

# Before sklearn loads libgomp: spinning OpenMP threads are pathological when the streaming app
# shares the machine's two cores (a busy machine made HGB fits 5-10x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Sequence
from pathlib import Path

from workbench import defaults
from workbench._lifeline import bind_to_supervisor
from workbench.config import get_settings
from workbench.exceptions import WorkbenchError
from workbench.ml._train import TrainResult, train_day, train_table

__all__ = ["TrainResult", "main", "train_day", "train_table"]

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the training subprocess."""
    bind_to_supervisor()  # dies with the workbench's supervisor, not with the scoring app
    parser = argparse.ArgumentParser(prog="python -m workbench.ml.train")
    parser.add_argument("--day", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--home")
    parser.add_argument("--window-days", type=int, default=defaults.TRAIN_WINDOW_DAYS)
    parser.add_argument("--max-rows", type=int, default=defaults.TRAIN_MAX_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="a Parquet log instead of the shards")
    args = parser.parse_args(argv)
    settings = get_settings(home=args.home)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / f"train_{args.day.isoformat()}.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if sys.stderr.isatty():  # under the supervisor stderr already goes to the same log file
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers)
    logger.info("training started day=%s home=%s", args.day, settings.home)
    try:
        result = train_day(settings, args.day, window_days=args.window_days, max_rows=args.max_rows,
                           seed=args.seed, data=args.data)
    except WorkbenchError as exc:
        logger.error("training failed day=%s error=%s", args.day, exc)
        return 1
    except Exception:
        logger.exception("training crashed day=%s", args.day)
        return 1
    logger.info("SUCCESS version=%s seconds=%.1f", result.version, result.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
