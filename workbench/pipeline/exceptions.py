"""Errors of the streaming applications (:mod:`workbench.pipeline`)."""

from __future__ import annotations

from workbench.exceptions import WorkbenchError

__all__ = ["AnomalyContractError", "PipelineConfigError", "PipelineError"]


class PipelineError(WorkbenchError):
    """Base class of the errors raised by the streaming applications."""


class PipelineConfigError(PipelineError, ValueError):
    """A parameter of an application has a value it cannot run with."""


class AnomalyContractError(PipelineError, ValueError):
    """A value does not follow the ``redshift.anomalies`` message contract (:mod:`.contracts`)."""
