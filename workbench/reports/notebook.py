"""Helpers the report notebooks share: parameter checks and parsing, chart setup, data discovery.

Each notebook starts with ``_before = set(globals())``, then its ``parameters`` cell of
``name: type = default  # help`` lines, then :func:`check_parameters`, which warns about names
papermill injected that the parameters cell does not declare (typos such as ``instance=``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.config import Settings
from workbench.exceptions import ConfigurationError

__all__ = [
    "UnknownParameterWarning",
    "check_parameters",
    "find_labelled_log",
    "parse_instances",
    "parse_list",
    "parse_time",
    "setup_charts",
]

logger = logging.getLogger(__name__)


class UnknownParameterWarning(UserWarning):
    """A parameter was passed to a notebook that its ``parameters`` cell does not declare."""


def check_parameters(namespace: Mapping[str, Any], before: Iterable[str]) -> list[str]:
    """Warn about (and return) injected names the parameters cell does not declare.

    Parameters
    ----------
    namespace : mapping
        The notebook's ``globals()`` after the parameters (and any injected) cell.
    before : iterable of str
        The names that existed before the parameters cell.
    """
    declared = set(namespace.get("__annotations__", {}))
    unknown = sorted(n for n in set(namespace) - set(before) - declared
                     if not n.startswith("_") and n not in ("In", "Out", "get_ipython", "exit", "quit"))
    if unknown:
        msg = (f"Unknown notebook parameter(s) {unknown}: they are ignored. "
               f"This notebook accepts {sorted(declared)}; check the spelling.")
        warnings.warn(msg, UnknownParameterWarning, stacklevel=2)
    return unknown


def parse_time(value: str | datetime | None, name: str) -> datetime | None:
    """An aware UTC datetime from ISO-8601 text (no zone = UTC); empty or ``None`` gives ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
        except ValueError as exc:
            msg = f"The `{name}` parameter must be an ISO-8601 time such as 2024-03-05T12:00. Got {value!r} instead."
            raise ConfigurationError(msg) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_list(value: str | Iterable[Any] | None) -> list[str]:
    """Items of a comma-separated string or a list (empty -> ``[]``)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def parse_instances(value: str | int | Iterable[Any] | None) -> list[int] | None:
    """Instance ids from ``"1,2"``, ``[1, 2]`` or ``3``; ``None`` (all instances) when empty."""
    if isinstance(value, int):
        return [value]
    items = parse_list(value)
    try:
        ids = [int(v) for v in items]
    except ValueError as exc:
        msg = f"The `instances` parameter must be integer ids like '1,2' or [1, 2]. Got {value!r} instead."
        raise ConfigurationError(msg) from exc
    return ids or None


def find_labelled_log(settings: Settings, labels_path: str = "") -> Path | None:
    """The labelled Parquet log to compare with.

    ``labels_path`` given: that file (must exist). ``"none"``: no labels. Empty: the newest
    ``*.parquet`` in ``settings.data_dir`` that has the generator's ``label_anomaly`` column.
    """
    if labels_path and labels_path.lower() == "none":
        return None
    if labels_path:
        path = Path(labels_path).expanduser()
        if not path.is_file():
            msg = f"The `labels_path` parameter must name a Parquet log. Got {labels_path!r}, which does not exist."
            raise ConfigurationError(msg)
        return path
    import pyarrow.parquet as pq

    candidates = sorted(settings.data_dir.glob("*.parquet"), key=lambda p: (p.stat().st_mtime, p.name),
                        reverse=True) if settings.data_dir.is_dir() else []
    for path in candidates:
        try:
            if "label_anomaly" in pq.read_schema(path).names:
                return path
        except Exception as exc:  # an unreadable file is not a labelled log
            logger.debug("skipping %s: %s", path, exc)
    return None


def setup_charts() -> None:
    """Render Altair charts as static SVG (offline, and kept in executed notebooks and reports)."""
    import altair as alt

    alt.renderers.enable("svg")
    alt.data_transformers.disable_max_rows()
