"""Errors about input query logs and messages."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["DataValidationError"]


class DataValidationError(WorkbenchError, ValueError):
    """A query-log file does not match the Redset schema; the message names file, column and row."""

    def __init__(self, message: str, *, path: str | None = None, column: str | None = None,
                 row: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.column = column
        self.row = row
