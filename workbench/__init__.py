"""Pulse Workbench: replay Redset query logs into Kafka and analyse them from notebooks.

>>> from workbench import Workbench
>>> wb = Workbench.start(data="log.parquet", speedup=600)  # doctest: +SKIP
>>> wb.controls()  # doctest: +SKIP
"""

import importlib

from workbench.exceptions import WorkbenchError

__all__ = ["Settings", "Workbench", "WorkbenchError", "get_settings"]
__version__ = "0.1.0"

_WHERE = {"Settings": "workbench.config", "get_settings": "workbench.config", "Workbench": "workbench.runtime"}


def __getattr__(name: str) -> object:
    # Lazy: `import workbench` stays cheap for the CLI (its --help imports no pydantic) and for subprocesses.
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    msg = f"module 'workbench' has no attribute {name!r}"
    raise AttributeError(msg)
