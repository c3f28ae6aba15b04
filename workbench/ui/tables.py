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

from workbench._units import human_mb, human_ms

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


def _share(value: Any) -> str:
    """A share (0..1) in percent to the tenth: coverage 0.905 and 0.868 read "90.5 %" and "86.8 %"."""
    return "" if _missing(value) else f"{100 * float(value):.1f} %"


def _per_10k(value: Any) -> str:
    """A rate (0..1) per 10,000: a holdout alert rate of 0.0001 read "0.000"."""
    return "" if _missing(value) else f"{10_000 * float(value):,.1f} per 10k"


def _tenths(value: Any) -> str:
    return "" if _missing(value) else f"{float(value):,.1f}"


def _names(value: Any) -> str:
    """A list of names (an instance's critical problem types) as text, not a Python list."""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(str(v) for v in value)
    return _name(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value)) or value is pd.NaT


#: Column name -> how its values read (the columns the analysis tables use).
_FORMATS: dict[str, Callable[[Any], str]] = {
    **dict.fromkeys(("true_ms", "pred_ms", "pred_q_ms", "excess_ms"), _ms),
    **dict.fromkeys(("under_ratio", "median_ratio", "worst_ratio", "exec_ratio"), _ratio),
    **dict.fromkeys(("anomalies", "queries", "rows", "alerts", "trained rows"), _count),
    "excess_hours": _hours,
    **dict.fromkeys(("q90 coverage", "holdout q90 coverage"), _share),
    "holdout alert rate": _per_10k,
    "alerts per 10k": _tenths,
    "critical_types": _names,
    "share %": lambda value: "" if _missing(value) else f"{float(value):,.2f}",
}
#: The evidence values, in the unit ``evidence_unit`` names.
_EVIDENCE_VALUES = frozenset({"expected_value", "observed_value", "excess_value"})
#: Columns whose text may wrap (everything else stays on one line).
_WRAPPING = frozenset({"reason", "evidence", "feature"})


def _value_in(unit: Any) -> Callable[[Any], str]:
    """How an evidence value in ``unit`` (the detector's ``evidence_unit``: ms or MB) reads."""
    return {"ms": _ms, "MB": _mb}.get(str(unit), _number)


def _mb(value: Any) -> str:
    return "" if _missing(value) else human_mb(float(value))


def _number(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):,.3f}".rstrip("0").rstrip(".")
    return str(value)


def _feature_format(name: str, unit: Any) -> Callable[[Any], str]:
    if name in _FORMATS:
        return _FORMATS[name]
    if name in _EVIDENCE_VALUES:
        return _value_in(unit)
    if name.endswith("_ms"):
        return _ms
    if name.startswith("mbytes_"):
        return _mb
    if name.endswith("_ids") or name.endswith("_fingerprint") or name.startswith("kafka_"):
        return _name
    return _number


def _readable_features(frame: pd.DataFrame) -> Any:
    """The drill-down's one-column evidence frame (:func:`~workbench.analysis.anomaly_summary.query_features`),
    each value in the unit its name gives: a browser tester read ``exec_ratio 2639.074172`` and
    ``mbytes_spilled 19931`` there."""
    values = frame["feature"]
    unit = values.get("evidence_unit")
    # every value now carries its unit, so the stored unit goes: "evidence_unit MB" sat beside "19.5 GB"
    values = values.drop("evidence_unit", errors="ignore")
    text = [_feature_format(str(name), unit)(value) for name, value in values.items()]
    shown = pd.DataFrame({"feature": text}, index=values.index)
    return shown.style.set_properties(subset=["feature"], **{"white-space": "pre-wrap"})


def readable(frame: pd.DataFrame) -> Any:
    """``frame`` as a notebook shows it (a pandas ``Styler``; an empty frame is returned as it is).

    The drill-down's evidence frame (one column, ``feature``, a row per stored value) reads each
    value in the unit its name gives.
    """
    if frame is None or frame.empty:
        return frame
    if list(frame.columns) == ["feature"]:
        return _readable_features(frame)
    formats: dict[str, Callable[[Any], str]] = {}
    for column in frame.columns:
        if column in _FORMATS:
            formats[column] = _FORMATS[column]
        elif str(column).endswith("_share"):
            formats[column] = _share
        elif pd.api.types.is_datetime64_any_dtype(frame[column]):
            formats[column] = _time
        elif str(column).endswith(("_id", "pid")):
            formats[column] = _name  # an id is a name, not a quantity: no separators
        elif pd.api.types.is_integer_dtype(frame[column]):
            formats[column] = _count
    # other numbers: three decimals (recall 0.995 stays) and separators (pandas showed 93.730000, 1.400000)
    styler = frame.style.format(formats, na_rep="", precision=3, thousands=",")
    if frame.index.name is None and pd.api.types.is_integer_dtype(frame.index):
        # row positions (0, 1, 2, or a selection's leftovers) name nothing: 03's side-by-side table showed
        # them as a first column (browser tester, 40th session)
        styler = styler.hide(axis="index")
    one_line = [c for c in frame.columns if c not in _WRAPPING]
    if one_line:
        styler = styler.set_properties(subset=one_line, **{"white-space": "nowrap"})
    wrapping = [c for c in frame.columns if c in _WRAPPING]
    if wrapping:  # text reads from the left, in lines of a sentence (a window's reason was right-aligned in 130 px)
        styler = styler.set_properties(subset=wrapping, **{"text-align": "left", "min-width": "24em"})
    # headers on one line too: 03's version names broke as "v0001-/2024-/03-04" down three lines (40th session)
    return styler.set_table_styles([{"selector": "th", "props": "white-space: nowrap"}], overwrite=False)
