"""Errors of the report runner."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["ReportError"]


class ReportError(WorkbenchError):
    """A report could not be produced (a notebook failed or an argument is unusable)."""

    def __init__(self, message: str, *, notebook: str | None = None) -> None:
        super().__init__(message)
        self.notebook = notebook
