"""Redset data: the schema, its validation, the message codec and a synthetic generator.

Names are imported on first use (as in :mod:`workbench.ml`): the ``workbench`` command imports
this package for its sub-commands, and ``--help`` must not pay for pyarrow and pandas.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from workbench._lazy import lazy_attributes

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

_WHERE = {
    "DataValidationError": "workbench.data.exceptions",
    "ANOMALY_KINDS": "workbench.data.generator",
    "GenerateSummary": "workbench.data.generator",
    "generate": "workbench.data.generator",
    "PrepareSummary": "workbench.data.prepare",
    "prepare": "workbench.data.prepare",
    "ProfileReport": "workbench.data.profile",
    "profile": "workbench.data.profile",
    "COLUMNS": "workbench.data.schema",
    "LABEL_COLUMNS": "workbench.data.schema",
    "LABEL_SCHEMA": "workbench.data.schema",
    "REDSET_SCHEMA": "workbench.data.schema",
    "SCHEMA_VERSION": "workbench.data.schema",
    "LogSummary": "workbench.data.schema",
    "read_batches": "workbench.data.schema",
    "validate": "workbench.data.schema",
}


#: Functions named like the module that defines them. The package's attribute is the function, as it
#: was when this package imported them eagerly, even after the import system binds the loaded module.
_SHADOWING = ("prepare", "profile")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWING and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__getattr__ = lazy_attributes(__name__, _WHERE)
