"""Stream analytics math (classification, mergeable window aggregates) and the notebooks' read API.

The streaming apps use :mod:`workbench.analysis.classify` and :mod:`workbench.analysis.windows`;
notebooks use :mod:`workbench.analysis.read` (imported on demand: it needs the stores).
"""

from __future__ import annotations

from workbench.analysis.classify import CLASSES, PROBLEM_CLASSES, classify_batch, classify_codes, classify_query
from workbench.analysis.exceptions import AnalysisError, MissingColumnsError, UnknownWindowError
from workbench.analysis.windows import finalize, merge, merge_all, partial_aggregates

__all__ = [
    "CLASSES",
    "PROBLEM_CLASSES",
    "AnalysisError",
    "MissingColumnsError",
    "UnknownWindowError",
    "classify_batch",
    "classify_codes",
    "classify_query",
    "finalize",
    "merge",
    "merge_all",
    "partial_aggregates",
]
