"""Redset data: the schema, its validation, the message codec and a synthetic generator."""

from __future__ import annotations

from workbench.data.exceptions import DataValidationError
from workbench.data.generator import ANOMALY_KINDS, GenerateSummary, generate
from workbench.data.prepare import PrepareSummary, prepare
from workbench.data.profile import ProfileReport, profile
from workbench.data.schema import (
    COLUMNS,
    LABEL_COLUMNS,
    LABEL_SCHEMA,
    REDSET_SCHEMA,
    SCHEMA_VERSION,
    LogSummary,
    read_batches,
    validate,
)

__all__ = [
    "ANOMALY_KINDS",
    "COLUMNS",
    "LABEL_COLUMNS",
    "LABEL_SCHEMA",
    "REDSET_SCHEMA",
    "SCHEMA_VERSION",
    "DataValidationError",
    "GenerateSummary",
    "LogSummary",
    "PrepareSummary",
    "ProfileReport",
    "generate",
    "prepare",
    "profile",
    "read_batches",
    "validate",
]
