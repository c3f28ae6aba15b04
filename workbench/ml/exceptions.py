"""Errors raised by the ML engine (features, models, registry, scoring, training)."""

from __future__ import annotations

from collections.abc import Iterable

from workbench.exceptions import WorkbenchError

__all__ = [
    "ColumnMismatchError",
    "MLError",
    "ModelNotFoundError",
    "NotFittedError",
    "ParityError",
    "RegistryError",
    "TrainingError",
    "UnlabelledDay",
    "UntrainableWindow",
]


class MLError(WorkbenchError):
    """Base class of every ML-engine error."""


class UnlabelledDay(MLError):
    """The evaluated day of a log carries no labels (``label_anomaly`` missing or NULL on every row of
    it), though the log may have some: it cannot be scored against them, and NULL-is-normal would
    evaluate it as a day without a single anomaly. ``workbench evaluate`` gives its alert report instead."""


class NotFittedError(MLError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (or a scorer before ``load``)."""


class ColumnMismatchError(MLError, ValueError):
    """The input columns do not match the columns the model was trained with.

    Attributes
    ----------
    missing, unseen : tuple of str
        Columns the model needs but the input lacks, and input columns the model does not know.
    """

    def __init__(self, *, missing: Iterable[str], unseen: Iterable[str], what: str = "model") -> None:
        self.missing = tuple(sorted(missing))
        self.unseen = tuple(sorted(unseen))
        parts = [f"The input columns do not match the columns the {what} was trained with."]
        if self.missing:
            parts.append(f"Missing ({len(self.missing)}): {_first_five(self.missing)}.")
        if self.unseen:
            parts.append(f"Unseen at fit time ({len(self.unseen)}): {_first_five(self.unseen)}.")
        parts.append("Pass a batch in the Redset schema (workbench.data.schema.REDSET_SCHEMA).")
        super().__init__(" ".join(parts))


def _first_five(names: tuple[str, ...]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (", ..." if len(names) > 5 else "")


class ParityError(MLError):
    """The exported ONNX model does not reproduce the sklearn model within the tolerance."""


class RegistryError(MLError):
    """A model version or the current pointer is missing, corrupt or cannot be written."""


class ModelNotFoundError(RegistryError, LookupError):
    """The requested model version does not exist."""


class TrainingError(MLError):
    """Training could not produce a model (too few rows, no shards in the window, ...)."""


class UntrainableWindow(TrainingError):
    """The training window's events cannot make a model (none, or fewer than the usable minimum).

    A due window's events are all stored, so a run later would read the same: not retried.
    """
