"""The registry of report pages: which notebooks a report runs, in which order, under which title.

The report runner, ``workbench report`` and the tests all read :data:`PAGES`. Adding a page is one
:class:`ReportPage` entry here plus its notebook in ``notebooks/`` (with a ``parameters`` cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ALL", "PAGES", "ReportPage", "page"]


@dataclass(frozen=True)
class ReportPage:
    """One report page: the notebook ``<name>.ipynb`` rendered to ``<name>.html``."""

    name: str
    title: str
    description: str


PAGES: Final[tuple[ReportPage, ...]] = (
    ReportPage("01_replay_control", "Replay control",
               "The workbench's replay and status at report time (attaches to a running workbench)."),
    ReportPage("02_anomaly_explorer", "Anomaly explorer",
               "Anomalies by instance, time and reason, top offenders, a drill-down, agreement with labels."),
    ReportPage("03_model_comparison", "Model comparison",
               "Model versions and the baseline side by side: metrics, PR curves, q90 coverage, disagreements."),
    ReportPage("04_stream_analytics", "Stream analytics",
               "Class shares over time, critical instances, metric cards with deltas, remediation."),
)
#: The page names, in report order.
ALL: Final[tuple[str, ...]] = tuple(p.name for p in PAGES)


def page(name: str) -> ReportPage:
    """The registered page ``name`` (a title-cased stand-in for a notebook that is not registered)."""
    for entry in PAGES:
        if entry.name == name:
            return entry
    return ReportPage(name, name.split("_", 1)[-1].replace("_", " ").capitalize(), "")
