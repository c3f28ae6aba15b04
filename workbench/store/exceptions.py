"""Errors of the storage layer (SQLite window stats, DuckLake anomaly lakehouse)."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = [
    "LakehouseBusyError",
    "LakehouseNotFoundError",
    "RowValidationError",
    "StoreClosedError",
    "StoreError",
    "StoreNotFoundError",
]


class StoreError(WorkbenchError):
    """Base class of the storage errors."""


class StoreClosedError(StoreError, RuntimeError):
    """A store method was called before ``open()`` (or after ``close()``)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A reader asked for a store that no writer has created yet."""


class LakehouseNotFoundError(StoreNotFoundError):
    """The DuckLake catalog does not exist yet (no anomaly was ever written)."""


class RowValidationError(StoreError, ValueError):
    """Rows handed to a store miss required fields, carry unknown ones, or have wrong types.

    Attributes
    ----------
    missing, unexpected : tuple of str
        Up to five missing and five unknown field names.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...] = (),
                 unexpected: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected


class LakehouseBusyError(StoreError):
    """The lakehouse catalog is locked or a concurrent commit conflicted; retry later.

    The write was rolled back entirely, so retrying the same batch is safe (writes are idempotent).
    The Quix sink translates this into ``SinkBackpressureError(retry_after=retry_after)``.

    Attributes
    ----------
    retry_after : float
        Suggested wait in seconds before retrying.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
