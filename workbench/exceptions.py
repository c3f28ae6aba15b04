"""The root of every error the workbench raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigurationError", "WorkbenchError"]


class WorkbenchError(Exception):
    """Base class: catch this to handle any failure the workbench explains itself."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (a notebook) shows: the message alone, which says what failed and what to do;
        a traceback of the package's frames only hid it (IPython's own protocol). Only for errors the
        workbench raises on purpose: a notebook cell calling ``wb.status()`` with the broker down
        (ReplayError) or ``Workbench.attach()`` with nothing running (WorkbenchStateError) showed a
        stack of package frames above the one line that explains it."""
        return [f"{type(self).__name__}: {self}"]


class ConfigurationError(WorkbenchError, ValueError):
    """A setting or parameter has a value the workbench cannot use."""
