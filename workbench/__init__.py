"""Pulse Workbench: replay Redset query logs into Kafka and analyse them from notebooks.

>>> from workbench import Workbench
>>> wb = Workbench.start(data="log.parquet", speedup=600)  # doctest: +SKIP
>>> wb.controls()  # doctest: +SKIP
"""

from workbench.config import Settings, get_settings
from workbench.exceptions import WorkbenchError

__all__ = ["Settings", "Workbench", "WorkbenchError", "get_settings"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy: `import workbench` stays cheap for the CLI and for subprocesses.
    if name == "Workbench":
        from workbench.runtime import Workbench

        return Workbench
    msg = f"module 'workbench' has no attribute {name!r}"
    raise AttributeError(msg)
