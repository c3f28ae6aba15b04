"""Reports: the analysis notebooks run headless (papermill) into offline, self-contained HTML.

>>> from workbench.reports import run_report  # doctest: +SKIP
>>> run_report(settings, params={"instances": "1,2"})  # doctest: +SKIP
PosixPath('.../reports/20240305T120000Z')
"""

from workbench.reports._run import DEFAULT_NOTEBOOKS_DIR, PARAMETER_NAMES, export_html, run_report
from workbench.reports.exceptions import ReportError
from workbench.reports.pages import ALL, PAGES, ReportPage

__all__ = ["ALL", "DEFAULT_NOTEBOOKS_DIR", "PAGES", "PARAMETER_NAMES", "ReportError", "ReportPage", "export_html",
           "run_report"]
