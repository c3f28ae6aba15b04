"""Reports: the analysis notebooks run headless (papermill) into offline, self-contained HTML.

>>> from workbench.reports import run_report  # doctest: +SKIP
>>> run_report(settings, params={"instances": "1,2"})  # doctest: +SKIP
PosixPath('.../reports/20240305T120000Z')
"""

from workbench.reports._run import ALL, DEFAULT_NOTEBOOKS_DIR, PARAMETER_NAMES, export_html, run_report
from workbench.reports.exceptions import ReportError

__all__ = ["ALL", "DEFAULT_NOTEBOOKS_DIR", "PARAMETER_NAMES", "ReportError", "export_html", "run_report"]
