"""Errors of the replay engine."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["ReplayError"]


class ReplayError(WorkbenchError, RuntimeError):
    """The replay cannot start or continue; the message says why and what to do."""
