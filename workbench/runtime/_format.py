"""How status values read: sizes and replay speeds, shared by the status text and the notebook panel.

Kept free of Kafka and widget imports, so the panel and the status module can both use it cheaply.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LATE_HINT", "SKIPPED_HINT", "format_bytes", "format_speed"]

#: What a non-zero late count means, beside it in the status text and the panel: after a seek or reset
#: back in time, or the same log started again, every re-sent event is late, and a user should know
#: that this is expected and that windows are not counted twice (a row never sent before is counted
#: in its window whenever it comes, so these are the late rows a replay makes).
LATE_HINT: Final = ("rows sent before and counted then, re-sent after a seek or reset back in time or the same "
                    "log started again; their windows keep their counts")


#: What rows a seek forward skipped mean, beside their count: the windows count them whenever they come,
#: but a day's model trained meanwhile was fitted without them, and its version stays.
SKIPPED_HINT: Final = ("a reset or a seek back sends them and the windows count them then, but a day trained "
                       "meanwhile was fitted without them: workbench models list shows its rows")

#: What a version trained on part of its days means, and the way out (:mod:`workbench.ml.coverage`).
PARTLY_TRAINED_HINT: Final = ("a seek forward skipped rows while they trained; they score their days' successors "
                              "all the same: a fresh start (workbench start --fresh) trains them on the whole log")


def format_bytes(n: int) -> str:
    """``1.2 GB``-style size."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def format_speed(speedup: float | str | None) -> str:
    """``"3,600x"``, ``"0.5x"`` or ``"max"`` (never scientific notation)."""
    if speedup is None:
        return "-"
    if isinstance(speedup, str) or speedup <= 0:
        return "max"
    return f"{speedup:,.0f}x" if speedup >= 10 else f"{speedup:,.3g}x"
