"""How a notebook's empty selection is told: the filters asked for, and a list of what there is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

__all__ = ["asked", "first_of"]


def asked(start: datetime | None = None, end: datetime | None = None, instances: Sequence[int] | None = None,
          **more: str) -> str:
    """The filters set, as "start 2024-03-05 12:00; instances 3, 17; reason 'slow'" ("none" without any);
    ``more`` adds text filters by name (empty ones are left out)."""
    parts = [f"start {start:%Y-%m-%d %H:%M}" if start else "", f"end {end:%Y-%m-%d %H:%M}" if end else "",
             f"instances {', '.join(map(str, instances))}" if instances else "", *more.values()]
    return "; ".join(p for p in parts if p) or "none"


def first_of(values: Iterable[object], n: int = 12) -> str:
    """The first ``n`` values joined, and how many more: "47, 69, 83 and 4 more"."""
    held = [str(v) for v in values]
    return ", ".join(held[:n]) + (f" and {len(held) - n} more" if len(held) > n else "")
