"""How quantities read in tables, cards and reason texts: durations, sizes, shares and their changes.

One owner, so a runtime reads "3.1 min" in a metric card, a flagged window's reason and its table
alike. Kept free of heavy imports: the analysis modules and the notebook widgets both use it.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["clock_duration", "human_mb", "human_ms", "percent", "points"]

# Decimal, as the unit names say: 20,522,432 MB read "19.6 TB" with binary factors (a tester's finding).
_HUMAN_MB: Final = (("TB", 1000 * 1000), ("GB", 1000), ("MB", 1))
_HUMAN_MS: Final = (("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1))


def _scaled(value: float, units: tuple[tuple[str, int], ...]) -> str:
    for unit, size in units:
        if abs(value) >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} {units[-1][0]}"


def human_ms(value: float) -> str:
    """``"850 ms"``, ``"9.0 s"``, ``"3.1 min"``, ``"1.2 h"``."""
    return _scaled(float(value), _HUMAN_MS)


def human_mb(value: float) -> str:
    """``"12 MB"``, ``"1.5 GB"``, ``"2.0 TB"``."""
    return _scaled(float(value), _HUMAN_MB)


def clock_duration(seconds: float | None) -> str:
    """A wait as a clock reads it: ``"45s"``, ``"3m 05s"``, ``"2h 03m 05s"``, ``"199d 23h 23m"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    whole = int(max(0, seconds))
    d, rest = divmod(whole, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d {h:02d}h {m:02d}m"
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def percent(share: float) -> str:
    """A share (0..1) as a percentage: ``"18 %"``, ``"3.7 %"``, ``"<0.1 %"`` (never ``3.187e-05``)."""
    value = float(share) * 100
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0 %"
    if abs(value) < 0.1:
        return "<0.1 %" if value > 0 else ">-0.1 %"
    return f"{value:.1f} %" if abs(value) < 10 else f"{value:.0f} %"


def points(change: float) -> str:
    """A change between two shares, in percentage points with its sign: ``"+3.7 pts"`` (not ``"+3.7 %"``,
    which reads as a relative change)."""
    value = float(change) * 100
    if math.isnan(value):
        return "n/a"
    return f"{value:+.1f} pts" if value else "0.0 pts"
