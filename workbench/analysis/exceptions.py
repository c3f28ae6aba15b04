"""Errors of the analysis layer (classification, window math, read API)."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["AnalysisError", "MissingColumnsError", "UnknownWindowError"]


class AnalysisError(WorkbenchError):
    """Base class of the analysis errors."""


class MissingColumnsError(AnalysisError, ValueError):
    """An input batch lacks columns an analysis needs.

    Attributes
    ----------
    missing : tuple of str
        The missing column names.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


class UnknownWindowError(AnalysisError, ValueError):
    """A named time window (``'24h'``, ``'1week'``) is not one the read API knows."""
