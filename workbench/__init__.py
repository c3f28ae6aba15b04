"""Pulse Workbench: replay Redset query logs into Kafka and analyse them from notebooks."""

from workbench.config import Settings, get_settings
from workbench.exceptions import WorkbenchError

__all__ = ["Settings", "WorkbenchError", "get_settings"]
__version__ = "0.1.0"
