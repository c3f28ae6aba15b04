"""The root of every error the workbench raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigurationError", "WorkbenchError"]


class WorkbenchError(Exception):
    """Base class: catch this to handle any failure the workbench explains itself."""


class ConfigurationError(WorkbenchError, ValueError):
    """A setting or parameter has a value the workbench cannot use."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (a notebook) shows: the message alone, which names the setting and what to
        change; a traceback of the package's frames only hid it (IPython's own protocol)."""
        return [f"{type(self).__name__}: {self}"]
