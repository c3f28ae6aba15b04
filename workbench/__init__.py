"""Pulse Workbench: replay Redset query logs into Kafka and analyse them from notebooks.

>>> from workbench import Workbench
>>> wb = Workbench.start(data="log.parquet", speedup=600)  # doctest: +SKIP
>>> wb.controls()  # doctest: +SKIP
"""

from workbench._lazy import lazy_attributes
from workbench.exceptions import WorkbenchError

__all__ = ["Settings", "Workbench", "WorkbenchError", "get_settings"]
__version__ = "0.1.0"

_WHERE = {"Settings": "workbench.config", "get_settings": "workbench.config", "Workbench": "workbench.runtime"}


# Lazy: `import workbench` stays cheap for the CLI (its --help imports no pydantic) and for subprocesses.
__getattr__ = lazy_attributes(__name__, _WHERE)
