"""The root of every error the workbench raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigurationError", "WorkbenchError"]


class WorkbenchError(Exception):
    """Base class: catch this to handle any failure the workbench explains itself."""


class ConfigurationError(WorkbenchError, ValueError):
    """A setting or parameter has a value the workbench cannot use."""
