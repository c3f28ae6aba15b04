"""Reports: the analysis notebooks run headless (papermill) into offline, self-contained HTML.

>>> from workbench.reports import run_report  # doctest: +SKIP
>>> run_report(settings, params={"instances": "1,2"})  # doctest: +SKIP
PosixPath('.../reports/20240305T120000Z')

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for pydantic.
"""

from __future__ import annotations

from workbench._lazy import lazy_attributes

__all__ = ["ALL", "DEFAULT_NOTEBOOKS_DIR", "PAGES", "PARAMETER_NAMES", "ReportError", "ReportPage", "export_html",
           "run_report"]

_WHERE = {
    "DEFAULT_NOTEBOOKS_DIR": "workbench.reports._run",
    "PARAMETER_NAMES": "workbench.reports._run",
    "export_html": "workbench.reports._run",
    "run_report": "workbench.reports._run",
    "ReportError": "workbench.reports.exceptions",
    "ALL": "workbench.reports.pages",
    "PAGES": "workbench.reports.pages",
    "ReportPage": "workbench.reports.pages",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
