"""How the notebooks' tables read: the same numbers, shown in their units.

The table builders of :mod:`workbench.analysis` return plain numeric frames (tests and code compute
with them); :func:`readable` gives a notebook the view of one: runtimes as "7.3 min", ratios as
"87.3x", counts with thousands separators, times to the second without the zone suffix (every time
is UTC), and no line breaks inside a cell but the long text ones. A browser tester read
``true_ms 438296.0``, ``229519`` and versions broken as ``v0001-2024-03-`` / ``04`` before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from workbench._units import human_ms

__all__ = ["readable"]


def _ms(value: Any) -> str:
    return "" if _missing(value) else human_ms(float(value))


def _ratio(value: Any) -> str:
    return "" if _missing(value) else f"{float(value):,.1f}x"


def _count(value: Any) -> str:
    return "" if _missing(value) else f"{int(value):,}"


def _name(value: Any) -> str:
    return "" if _missing(value) else str(value)


def _hours(value: Any) -> str:
    return "" if _missing(value) else f"{float(value):,.2f} h"


def _time(value: Any) -> str:
    return "" if _missing(value) else f"{pd.Timestamp(value):%Y-%m-%d %H:%M:%S}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value)) or value is pd.NaT


#: Column name -> how its values read (the columns the analysis tables use).
_FORMATS: dict[str, Callable[[Any], str]] = {
    **dict.fromkeys(("true_ms", "pred_ms", "pred_q_ms", "excess_ms"), _ms),
    **dict.fromkeys(("under_ratio", "median_ratio", "worst_ratio"), _ratio),
    **dict.fromkeys(("anomalies", "queries", "rows", "alerts", "trained rows"), _count),
    "excess_hours": _hours,
}
#: Columns whose text may wrap (everything else stays on one line).
_WRAPPING = frozenset({"reason", "evidence", "feature"})


def readable(frame: pd.DataFrame) -> Any:
    """``frame`` as a notebook shows it (a pandas ``Styler``; an empty frame is returned as it is)."""
    if frame is None or frame.empty:
        return frame
    formats: dict[str, Callable[[Any], str]] = {}
    for column in frame.columns:
        if column in _FORMATS:
            formats[column] = _FORMATS[column]
        elif pd.api.types.is_datetime64_any_dtype(frame[column]):
            formats[column] = _time
        elif str(column).endswith("_id"):
            formats[column] = _name  # an id is a name, not a quantity: no separators
        elif pd.api.types.is_integer_dtype(frame[column]):
            formats[column] = _count
    # other numbers: three decimals (recall 0.995 stays) and separators (pandas showed 93.730000, 1.400000)
    styler = frame.style.format(formats, na_rep="", precision=3, thousands=",")
    one_line = [c for c in frame.columns if c not in _WRAPPING]
    if one_line:
        styler = styler.set_properties(subset=one_line, **{"white-space": "nowrap"})
    return styler
